"""The manifest: `_manifest.json` plus its commit log, the single source of truth of a run.

`_manifest.json` holds the fingerprint (everything that decides the vector space and the
output's form), the shard plan, what readers need (quantization, engine options, input) and
which commit files are live; the committed shards (part path, rows, tokens, sha256, ...) are in
those files (`commit_log.py`): columnar segments plus an append-only log. A shard is done only
once its record is durable in the log (its part was made durable before: `OutputFolder.publish`):
`commit` appends one line and fsyncs it (local), or writes its batch as one object (object
stores; batches span at most FLUSH_S seconds, and a
shard counts as committed only once its batch object is written). A commit costs O(1) in the
number of shards; nothing committed is ever redone after a crash. Every `fold_every()` commits
the log is folded into segments and `_manifest.json` is replaced atomically to name them.

Version 1 manifests (every record inside `_manifest.json`) still load; a run resuming one
rewrites it as version 2 at start. A `_manifest.json` that is not a manifest (cut short, emptied,
edited) is refused naming the file: what it committed cannot be known.
"""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from ..errors import FingerprintMismatch, OutputFolderError
from ..redact import redact
from . import commit_log, writer
from .commit_log import Commits, ShardRecords
from .output_folder import MANIFEST_NAME, OutputFolder

__all__ = ["Manifest", "FingerprintMismatch", "MANIFEST_NAME", "check_resumable", "fingerprint_diff",
           "read_manifest"]
VERSION = 2
READS = (1, 2)
FLUSH_S = 1.0  # object stores: commits gathered into one log object for at most this long


class Manifest:
    """The manifest of one output folder: metadata in `data`, committed shards in `shards`."""

    def __init__(self, folder: OutputFolder, data: dict, commits: Commits | None = None,
                 generation: int = 0, log_objects: list[str] | None = None):
        self.folder, self.data = folder, data
        self.commits = commits or Commits()
        self.data["shards"] = ShardRecords(self.commits)
        self.generation, self.log_objects = generation, list(log_objects or [])
        self.appendable = folder.appendable
        self._fd, self._pending, self._last_flush, self._dirty = None, [], 0.0, True
        self._folds = self._committed = 0
        self._torn = False  # the local log ends in a line a killed driver never finished

    @classmethod
    def load(cls, folder: OutputFolder, commits: bool = True) -> "Manifest | None":
        """The manifest in `folder`, or None when there is none (`commits=False`: the metadata
        only, no shard records). A reader racing a writer's fold (which deletes the files it
        replaced) reads again: the generation it read must still be the current one."""
        for attempt in range(5):
            body = folder.read_manifest()
            if body is None:
                return None
            try:
                manifest = cls._load(folder, body, commits)
            except FileNotFoundError:
                if attempt == 4:
                    raise
                continue
            if not commits or folder.read_manifest() == body:
                break
        return manifest

    @classmethod
    def _load(cls, folder: OutputFolder, body: bytes, commits: bool) -> "Manifest":
        data = _parse(folder, body)
        version = data.get("version")
        if version not in READS:
            raise FingerprintMismatch(
                f"{folder.show(MANIFEST_NAME)} has manifest version {version}, this pipeline reads "
                f"versions {', '.join(map(str, READS))}; write to a new folder or pass overwrite=True "
                "(--overwrite)")
        store, info = Commits(), data.pop("commits", {})
        old = data.pop("shards", {})
        if version == 1 and commits and old:
            ids = [int(k) for k in old]
            store.add_segment(None, commit_log.to_table(ids, list(old.values())))  # written on resume
        if version == 2 and commits:
            for segment in info.get("segments", []):
                store.add_segment(segment, folder.read_part(segment))
        manifest = cls(folder, data, store, info.get("generation", 0))
        if version == 2 and commits:
            manifest._read_log(info.get("log"))
        manifest.data["version"] = VERSION
        return manifest

    @classmethod
    def new(cls, folder: OutputFolder, fingerprint: dict, plan: dict) -> "Manifest":
        data = {"version": VERSION, "fingerprint": fingerprint, "plan": plan, "complete": False}
        return cls(folder, data)

    @property
    def fingerprint(self) -> dict:
        return self.data["fingerprint"]

    @property
    def plan(self) -> dict:
        return self.data["plan"]

    @property
    def shards(self) -> ShardRecords:
        """Committed shards: shard id -> record (path, rows, tokens, sha256, ...)."""
        return self.data["shards"]

    def committed(self) -> np.ndarray:
        """Indices of the committed shards, ascending (no record is built)."""
        return self.commits.committed()

    def records(self):
        """(shard id, record) of every committed shard in shard order, converted in bulk."""
        return self.shards.items()

    def files(self) -> set[str]:
        """Relative paths of every file the committed shards and the commit log own."""
        self.flush()
        names = set()
        for _, r in self.commits.records(self.committed()):
            names.add(r["path"])
            if r.get("errors"):
                names.add(r["errors"])
        names.update(p for p, _ in self.commits.segments if p)
        names.update(self.log_objects)
        if self.appendable and self.folder.exists(self._log):
            names.add(self._log)
        return names

    # -- writing -----------------------------------------------------------------------------

    def commit(self, shard_id: str, record: dict) -> None:
        """Make `record` durable in the log (object stores: in the batch, written within
        FLUSH_S); the shard counts as committed once it is."""
        if self.data.get("complete"):
            self.data["complete"], self._dirty = False, True
        self._pending.append((shard_id, record))
        if self.appendable or time.monotonic() - self._last_flush >= FLUSH_S:
            self.flush()

    def tick(self) -> None:
        """Write a batch that waited FLUSH_S (object stores); the driver calls it while it waits."""
        if self._pending and time.monotonic() - self._last_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the pending commits to the log, durably; then they count as committed."""
        if not self._pending:
            return
        body = redact(commit_log.encode_lines(self._pending).decode()).encode()
        if self.appendable:
            self._fd = self.folder.append(self._log, body, self._fd)
        else:
            name = f"{self._log}/{len(self.log_objects):08d}.jsonl"
            self.folder.publish(name, body)
            self.log_objects.append(name)
        self._last_flush = time.monotonic()
        for shard_id, record in self._pending:
            self.commits.add(int(shard_id), record)
        self._committed += len(self._pending)
        self._pending = []
        crash_point("after_log", self._committed)
        if len(self.commits.tail) >= commit_log.fold_every():
            self.fold()

    def put(self, key: str, value) -> None:
        """Keep `value` (JSON-able) under `key` (e.g. "quantization", "engine_options", "input")."""
        self.data[key] = value
        self._dirty = True

    def uncommit(self, shard_id: str) -> None:
        self.commits.remove(int(shard_id))
        self.data["complete"], self._dirty = False, True

    def finish(self, summary: dict) -> None:
        """Mark the run complete; every record goes into one segment (readers load one file)."""
        self.flush()
        self.fold(full=True)
        self.data["complete"] = True
        self.data["summary"] = summary
        self._dirty = True

    def save(self, force: bool = False) -> None:
        """Write pending commits, and `_manifest.json` when its metadata changed (force: also
        a version-1 manifest's records as version 2)."""
        self.flush()
        if force and any(p is None for p, _ in self.commits.segments):
            self.fold()
        elif self._dirty:
            self._write()

    def fold(self, full: bool = False) -> None:
        """Fold the log into segments, name them and a new log generation in `_manifest.json`
        (atomic replace), then delete the files no longer named. A crash before the replace
        leaves the previous manifest and its files; after it, the new one: either way the
        files of the other are strays, removed on resume."""
        self.flush()
        replaced = self.commits.fold(full)
        fresh = [k for k, (p, _) in enumerate(self.commits.segments) if p is None]
        old_log, old_objects = self._log, self.log_objects
        if not fresh and not old_objects and not self._torn and not (self.appendable and self._fd is not None):
            return self._write() if self._dirty else None
        self.generation += 1
        for k in fresh:
            name = commit_log.segment_name(self.generation)
            self.folder.publish(name, writer.encode(self.commits.segments[k][1], "parquet"))
            self.commits.segments[k] = (name, self.commits.segments[k][1])
        self._folds += 1
        crash_point("fold_written", self._folds)
        self._close_log()
        self.log_objects, self._torn = [], False
        self._write()
        crash_point("fold_switched", self._folds)
        self.folder.remove_quietly([*replaced, old_log] if self.appendable else replaced)
        if not self.appendable and old_objects:
            self.folder.remove_tree(old_log)

    def _write(self) -> None:
        body = {k: v for k, v in self.data.items() if k != "shards"}
        body["commits"] = {"generation": self.generation, "log": self._log,
                           "segments": [p for p, _ in self.commits.segments if p]}
        self.folder.save_manifest(json.dumps(body, indent=1, sort_keys=True).encode())
        self._dirty = False

    @property
    def _log(self) -> str:
        return commit_log.log_name(self.generation, self.appendable)

    def _read_log(self, log: str | None) -> None:
        if not log:
            return
        if log.endswith(".jsonl"):  # one appended file: a torn last line was never committed
            body = self.folder.read_file(log) or b""
            self._torn = bool(body) and not body.endswith(b"\n")
            entries = commit_log.parse_lines(body, self.folder.show(log), torn_ok=True)
        else:  # one object per batch, each written whole
            self.log_objects = self.folder.list_files(log)
            entries = [e for name in self.log_objects
                       for e in commit_log.parse_lines(self.folder.read_file(name) or b"",
                                                       self.folder.show(name), torn_ok=False)]
        for shard, record in entries:
            self.commits.add(shard, record)

    def _close_log(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse(folder: OutputFolder, body: bytes) -> dict:
    """The JSON object in `_manifest.json`; a file that is not one (cut short, emptied, edited)
    is refused naming it: what was committed cannot be known, so nothing is resumed from it."""
    try:
        data = json.loads(body.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(folder, f"is not valid JSON ({e})" if body.strip() else "is empty") from None
    if not isinstance(data, dict):
        raise _damaged(folder, f"holds a JSON {type(data).__name__}, not a manifest")
    if data.get("version") in READS and not isinstance(data.get("fingerprint"), dict):
        raise _damaged(folder, "has no fingerprint")
    return data


def _damaged(folder: OutputFolder, problem: str) -> OutputFolderError:
    return OutputFolderError(
        f"{folder.show(MANIFEST_NAME)} {problem}: it was damaged (edited, or cut short by a crash "
        "of the machine) and what it committed cannot be known; write to a new folder, or pass "
        "overwrite=True (--overwrite) to start this one again")


def read_manifest(location) -> dict:
    """The manifest of an output folder as a dict: its metadata and `shards` (shard id ->
    record, a read-only mapping). For tests and tools that used to read `_manifest.json`."""
    manifest = Manifest.load(OutputFolder.open(location))
    if manifest is None:
        raise FileNotFoundError(f"{location} has no {MANIFEST_NAME}")
    return manifest.data


CRASH_ENV = "PIPELINE_CRASH_AT"


def crash_point(name: str, count: int, before=None) -> None:
    """TEST-ONLY fault injection (tests/pipeline/test_pipeline_crash.py): PIPELINE_CRASH_AT=NAME:N
    SIGKILLs this process the Nth time it passes point NAME (after calling `before`). Points:
    the driver's plan, after_publish:N and mid_run:N (`driver.py`; N: the Nth finished shard),
    and the log's after_log:N (N shards durable), fold_written:N and fold_switched:N (the Nth
    fold: its segment written / `_manifest.json` replaced). Never set it outside tests."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point == name and count == int(n or 0):
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)


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
