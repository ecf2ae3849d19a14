"""The manifest: `_manifest.json` in the output folder, the single source of truth of a run.

It holds the fingerprint (everything that decides the vector space and the output's form), the
shard plan, and the committed shards (part path, rows, tokens, sha256). A shard is done only
once the manifest names it; it is saved by atomic replace (`OutputFolder.save_manifest`).
Saves are throttled to keep huge runs from rewriting a big JSON on every shard: a crash loses
at most a few seconds of commits, whose parts are then removed and redone on resume.
"""
from __future__ import annotations

import json
import time

from ..errors import FingerprintMismatch
from .output_folder import MANIFEST_NAME, OutputFolder

__all__ = ["Manifest", "FingerprintMismatch", "MANIFEST_NAME", "check_resumable", "fingerprint_diff"]
VERSION = 1


class Manifest:
    """In-memory manifest of one output folder, with throttled atomic saves."""

    def __init__(self, folder: OutputFolder, data: dict):
        self.folder, self.data = folder, data
        self._last_save, self._save_cost, self._dirty = 0.0, 0.0, True

    @classmethod
    def load(cls, folder: OutputFolder) -> "Manifest | None":
        """The manifest in `folder`, or None when there is none."""
        body = folder.read_manifest()
        if body is None:
            return None
        data = json.loads(body.decode())
        if data.get("version") != VERSION:
            raise FingerprintMismatch(
                f"{folder.show(MANIFEST_NAME)} has manifest version {data.get('version')}, this "
                f"pipeline reads version {VERSION}; write to a new folder or pass overwrite=True "
                "(--overwrite)")
        return cls(folder, data)

    @classmethod
    def new(cls, folder: OutputFolder, fingerprint: dict, plan: dict) -> "Manifest":
        data = {"version": VERSION, "fingerprint": fingerprint, "plan": plan,
                "complete": False, "shards": {}}
        return cls(folder, data)

    @property
    def fingerprint(self) -> dict:
        return self.data["fingerprint"]

    @property
    def plan(self) -> dict:
        return self.data["plan"]

    @property
    def shards(self) -> dict[str, dict]:
        """Committed shards: shard id -> record (path, rows, tokens, sha256, ...)."""
        return self.data["shards"]

    def files(self) -> set[str]:
        """Relative paths of every file the committed shards own."""
        names = {r["path"] for r in self.shards.values()}
        return names | {r["errors"] for r in self.shards.values() if r.get("errors")}

    def commit(self, shard_id: str, record: dict) -> None:
        self.shards[shard_id] = record
        self.data["complete"] = False
        self._dirty = True

    def put(self, key: str, value) -> None:
        """Keep `value` (JSON-able) under `key` (e.g. "quantization", "engine_options", "input")."""
        self.data[key] = value
        self._dirty = True

    def uncommit(self, shard_id: str) -> None:
        self.shards.pop(shard_id, None)
        self._dirty = True

    def finish(self, summary: dict) -> None:
        self.data["complete"] = True
        self.data["summary"] = summary
        self._dirty = True

    def save(self, force: bool = False) -> None:
        """Atomic replace; unless forced, at most every max(1 s, 10x the last save's cost)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_save < max(1.0, 10 * self._save_cost)):
            return
        self.folder.save_manifest(json.dumps(self.data, indent=1, sort_keys=True).encode())
        self._save_cost, self._last_save, self._dirty = time.monotonic() - now, now, False


def fingerprint_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences, one per leaf: "model.sha256: 'ab..' in the output, 'cd..' now"."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(fingerprint_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the output, {b!r} in this run")
    return out


def check_resumable(manifest: Manifest, fingerprint: dict, plan: dict) -> None:
    """Raise FingerprintMismatch naming what differs between the output's run and this one."""
    diffs = fingerprint_diff(manifest.fingerprint, fingerprint)
    for key in ("source", "num_rows", "num_fragments", "input_digest"):
        if manifest.plan.get(key) != plan.get(key):
            diffs.append(f"input {key}: {manifest.plan.get(key)!r} in the output, "
                         f"{plan.get(key)!r} in this run")
    if diffs:
        raise FingerprintMismatch(
            f"{manifest.folder} holds embeddings of a different run, so resuming would mix them:\n  "
            + "\n  ".join(diffs)
            + "\nWrite to a new output folder, or pass overwrite=True (--overwrite) to start over.")
