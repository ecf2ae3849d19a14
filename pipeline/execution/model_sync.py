"""The model on every node (issue 15 item 5): one local copy per node, cached by content hash.

`model=` may be a URI (`s3://…/model-folder`, anything `pyarrow.fs` opens) or a local folder
that exists only where the driver runs. The driver describes the folder once (`model_spec`):
every file's relative name, size and sha256, and the content hash of that list, which names the
cache entry. A local folder is shipped through Ray's object store (`ray.put` in CHUNK pieces, so
the driver never holds a whole file; fine for models up to a few GB, larger ones belong on object
storage); a URI is read by each node straight from storage. (When the driver started Ray itself
every worker is on its machine: the driver passes no spec and the engine opens the path.)

In each actor, before its engine is built, `ensure_local_model(spec)` returns the folder to load:
- on the driver's own node, a local folder is used in place (no copy);
- elsewhere `<cache>/<hash>/<folder name>`, where `<cache>` is $PREFILL_EMBED_CACHE or
  `~/.cache/prefill-embed/models` (kept across runs and Ray sessions: the second run on a node
  copies nothing). The first actor of a node copies under an exclusive `flock` into a temporary
  folder, checks every size and sha256, writes `COMPLETE` and renames the folder into place
  (atomic), so the other actors of that node wait and then reuse it, and a crash mid-copy
  leaves nothing that looks complete. The folder keeps its own name, so the engine's fingerprint
  (which records the model folder's name and weight hash) equals a run from the original path.

A missing, short or changed file is a `ModelSyncError` naming the node and the file. Credentials
in a URI are never shown: every message, and the spec's repr, go through `redact`.
Hidden files and formats the engine never reads (ONNX, OpenVINO, TF/Flax/Rust weights) are not
copied.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray

from ..errors import InputNotFoundError, RunFailedError
from ..fs import filesystem, is_uri
from ..redact import redact

CACHE_ENV = "PREFILL_EMBED_CACHE"
DEFAULT_CACHE = "~/.cache/prefill-embed/models"
CHUNK = 64 << 20  # bytes per object-store piece and per read
COMPLETE = "COMPLETE"  # written last inside a cache entry: the entry is whole
_SKIP_DIRS = {"onnx", "openvino", "flax", "tf", "coreml"}
_SKIP_SUFFIXES = (".onnx", ".onnx_data", ".h5", ".msgpack", ".ot", ".tflite", ".mlmodel", ".lock")


class ModelSyncError(RunFailedError, FileNotFoundError):
    """A node could not get a whole, unchanged copy of the model folder (the message names the
    node and the file)."""


@dataclass(frozen=True)
class ModelFile:
    rel: str                # path relative to the model folder, "/"-separated
    size: int
    sha256: str
    blobs: tuple = ()       # ObjectRefs of its CHUNK pieces when shipped through the object store


@dataclass(frozen=True)
class ModelSpec:
    """What a node needs to make its own copy of the model folder."""

    source: str             # absolute local path or the URI as given (may hold credentials)
    files: tuple[ModelFile, ...]
    digest: str             # content hash: sha256 over (name, size, sha256) of every file
    origin_node: str        # Ray node id of the driver (its local folder is used in place)

    @property
    def name(self) -> str:
        """The folder's own name (kept in the cache, so the engine's fingerprint is unchanged)."""
        path = filesystem(self.source)[1] if is_uri(self.source) else self.source
        return os.path.basename(path.rstrip("/")) or "model"

    @property
    def shown(self) -> str:
        return redact(self.source)

    def __repr__(self) -> str:
        return (f"ModelSpec({self.shown!r}, {len(self.files)} files, "
                f"{sum(f.size for f in self.files)} bytes, digest {self.digest[:16]})")


def cache_root() -> Path:
    """The folder holding this node's cached model copies."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def model_spec(model: str) -> ModelSpec:
    """Describe the model folder at `model` (local path or URI), reading every file once to hash
    it; a local folder's bytes also go into the object store (so call it once Ray is up)."""
    uri = is_uri(model)
    fs, root = filesystem(model)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    rels = sorted(i.path[len(root):].lstrip("/") for i in infos if i.is_file)
    rels = [r for r in rels if _wanted(r)]
    if not rels:
        raise InputNotFoundError(f"model folder {redact(model)!r} holds no files (or does not "
                                 "exist); pass the folder with config.json, the tokenizer and "
                                 "*.safetensors")
    files = tuple(_describe(fs, f"{root}/{rel}", rel, ship=not uri) for rel in rels)
    digest = hashlib.sha256("".join(f"{f.rel}\0{f.size}\0{f.sha256}\n" for f in files).encode())
    return ModelSpec(model if uri else os.path.abspath(model), files, digest.hexdigest()[:32],
                     ray.get_runtime_context().get_node_id())


def _wanted(rel: str) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts) or any(p in _SKIP_DIRS for p in parts[:-1]):
        return False
    return not rel.endswith(_SKIP_SUFFIXES)


def _describe(fs, path: str, rel: str, ship: bool) -> ModelFile:
    h, size, blobs = hashlib.sha256(), 0, []
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if ship:
                blobs.append(ray.put(chunk))
    return ModelFile(rel, size, h.hexdigest(), tuple(blobs))


def ensure_local_model(spec: ModelSpec) -> str:
    """The local folder this node's engine loads `spec`'s model from (copied once per node)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    if node == spec.origin_node and not is_uri(spec.source) and os.path.isdir(spec.source):
        return spec.source  # the driver's own folder
    root = cache_root()
    final = root / spec.digest
    if _complete(final, spec):
        return str(final / spec.name)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{spec.digest}.lock"):
        if _complete(final, spec):  # another actor of this node copied it while we waited
            return str(final / spec.name)
        tmp = root / f".{spec.digest}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            for f in spec.files:
                _fetch(spec, f, tmp / spec.name / f.rel, node)
            (tmp / COMPLETE).write_text(json.dumps({"source": spec.shown, "files": len(spec.files)}))
            if final.exists():  # an entry whose files were changed or removed since
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final / spec.name)


def _complete(entry: Path, spec: ModelSpec) -> bool:
    """A cache entry is usable when it was finished and every file still has its size."""
    if not (entry / COMPLETE).is_file():
        return False
    try:
        return all((entry / spec.name / f.rel).stat().st_size == f.size for f in spec.files)
    except OSError:
        return False


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(spec: ModelSpec, f: ModelFile, dest: Path, node: str) -> None:
    """Copy one file of the model into `dest`, checking its size and sha256 against the spec."""
    base, query = spec.shown.split("?", 1) if "?" in spec.shown else (spec.shown, "")
    shown = f"{base.rstrip('/')}/{f.rel}" + (f"?{query}" if query else "")
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            for chunk in _chunks(spec, f):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except (OSError, ray.exceptions.ObjectLostError) as e:
        if isinstance(e, FileNotFoundError) or "not found" in str(e).lower() \
                or "does not exist" in str(e).lower():
            raise ModelSyncError(f"{_where(node)}: model file {shown} is missing (it was there "
                                 "when the run started); restore it and rerun") from None
        raise ModelSyncError(f"{_where(node)}: copying model file {shown} to {dest} failed: "
                             f"{redact(e)}") from None
    if size != f.size or h.hexdigest() != f.sha256:
        raise ModelSyncError(
            f"{_where(node)}: model file {shown} changed since the run started ({size} bytes, "
            f"sha256 {h.hexdigest()[:12]}; the driver saw {f.size} bytes, sha256 {f.sha256[:12]}); "
            "do not modify the model folder during a run, then rerun")


def _chunks(spec: ModelSpec, f: ModelFile):
    if f.blobs:
        for ref in f.blobs:
            yield ray.get(ref)
        return
    fs, root = filesystem(spec.source)
    with fs.open_input_stream(f"{root.rstrip('/')}/{f.rel}") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _where(node: str) -> str:
    return f"node {socket.gethostname()} ({node[:12] or 'no Ray'})"
