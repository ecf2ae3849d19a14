"""The output folder of a run: one object (pyarrow filesystem + path) that owns every file in it.

It parses the location (a local path, made absolute, or a `scheme://` URI resolved by
`pyarrow.fs.FileSystem.from_uri`; `is_uri` is the only place that asks), publishes files
atomically, saves and loads the manifest's bytes, lists and removes stray files, and reads
parts back. Publishing: on a local (POSIX) filesystem the bytes go to a hidden temporary name,
fsynced, that is renamed into place (its folder fsynced after), so a file appears whole or not
at all, and a crash of the machine cannot empty a file that a commit names; on an object
store, where rename is a copy and not atomic, they go in one object write (the object appears
when the upload completes). Either way only the manifest commit makes a part count. The manifest's
commit log (`commit_log.py`) is appended to a file where the filesystem can append (local).

Requests to object stores are kept few (docs/SCALE.md counts them): S3 outputs are opened with
`allow_delayed_open`, so an object under 5 MB is one PUT (not a 3-request multipart upload); no
directory is created before a write; listings give sizes, so no HEAD per file.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from . import writer
from ..fs import absolute, filesystem, is_uri  # noqa: F401 (absolute, is_uri re-exported)
from ..errors import OutputFolderError, OutputWriteError
from ..redact import redact  # noqa: F401 (re-exported: the driver and tests import it from here)

MANIFEST_NAME = "_manifest.json"
ERRORS_FILE = "_errors.parquet"
ERRORS_DIR = "_errors"
# Filesystems (pyarrow `type_name`) whose rename replaces the target atomically (rename(2)).
RENAME_IS_ATOMIC = {"local"}
# Everything the pipeline may leave in an output folder; nothing else is ever deleted there
# (`_manifest.json.<hex>.tmp`: the manifest's temporary of older versions).
_OURS = re.compile(r"^(part-\d+-[0-9a-f]+\.(parquet|arrow)|\.part-.*\.tmp|_manifest\.json(\.[0-9a-f]+\.tmp)?"
                   r"|_errors\.parquet|_errors/\d+-[0-9a-f]+\.(jsonl|parquet)"
                   r"|_commits/(segment-\d+\.parquet|log-\d+\.jsonl|log-\d+/\d+\.jsonl|\.part-.*\.tmp))$")
_SHOW = 8  # file names listed in an error message


def is_ours(rel: str) -> bool:
    """Whether a path relative to an output folder is a name the pipeline writes."""
    return bool(_OURS.match(rel))


@dataclass(frozen=True)
class OutputFolder:
    """A run's output folder. `location` is what a user passes back (URI, or absolute path)."""

    fs: pafs.FileSystem
    path: str
    location: str

    @classmethod
    def open(cls, location) -> "OutputFolder":
        """The folder at a local path or URI (nothing is created or read)."""
        fs, path = filesystem(_delayed_open(location))
        return cls(fs, path.rstrip("/") or "/", absolute(location))

    def __str__(self) -> str:
        return redact(self.location)

    @property
    def atomic_rename(self) -> bool:
        return self.fs.type_name in RENAME_IS_ATOMIC

    @property
    def appendable(self) -> bool:
        """Whether files can be appended to (the commit log is one file, not one object per batch)."""
        return self.fs.type_name == "local"

    @property
    def is_local(self) -> bool:
        return self.fs.type_name == "local"

    def file(self, rel: str) -> str:
        """The filesystem path of `rel` (a name relative to the folder)."""
        return f"{self.path}/{rel}"

    def show(self, rel: str) -> str:
        """`rel` as users see it in messages (credentials redacted)."""
        return f"{self}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.file(rel)).type == pafs.FileType.File

    def create(self) -> None:
        self.fs.create_dir(self.path, recursive=True)
        if self.is_local:  # its name durable before any commit inside it
            _fsync_dir(os.path.dirname(self.path))

    # -- publish ---------------------------------------------------------------------------

    def publish(self, rel: str, data, owner: str = "") -> None:
        """Make `rel` hold `data` (bytes or a pyarrow Buffer), whole or not at all; replaces an
        existing `rel` atomically. On failure nothing was published (a temporary is removed)
        and OutputWriteError names the file.

        Locally the bytes and then the new name are fsynced before this returns: a commit
        record (fsynced too) that names the file never outlives the file's contents when the
        machine crashes; without it a part or `_manifest.json` could come back empty after a
        power loss, the rename durable and the data not."""
        final = self.file(rel)
        target = final if not self.atomic_rename else self.file(f".part-{uuid.uuid4().hex}.tmp")
        try:
            if "/" in rel and self.is_local:  # object stores have no folders to make
                self.fs.create_dir(self.file(rel.rsplit("/", 1)[0]), recursive=True)
            if target == final:
                with self.fs.open_output_stream(target) as f:
                    f.write(data)
            else:
                with open(target, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(target, final)
                _fsync_dir(os.path.dirname(final))
                if "/" in rel:  # a folder made above: its name too
                    _fsync_dir(self.path)
        except OSError as e:
            if target != final:
                self._remove_quietly(target)
            prefix = f"{owner}: " if owner else ""
            raise OutputWriteError(f"{prefix}writing {self.show(rel)} failed ({e}); nothing was "
                                   "published: free space or fix the output folder, then rerun "
                                   "to resume") from e

    def publish_part(self, shard_id: str, table: pa.Table, fmt: str) -> dict:
        """Publish `table` as a new part of shard `shard_id`; returns its manifest record. The
        name carries a per-attempt token, so a late write of an orphaned actor never replaces a
        committed part."""
        data = writer.encode(table, fmt)
        name = f"part-{shard_id}-{uuid.uuid4().hex[:12]}{writer.FORMATS[fmt].extension}"
        self.publish(name, data, owner=f"shard {shard_id}")
        return {"path": name, "rows": table.num_rows, "bytes": data.size,
                "sha256": hashlib.sha256(data).hexdigest()}

    def publish_errors(self, shard_id: str, errors: pa.Table) -> str:
        """Publish one shard's bad rows (a `validate.errors_table`) under `_errors/`; returns the
        relative path. The finish step builds `_errors.parquet` from these files."""
        name = f"{ERRORS_DIR}/{shard_id}-{uuid.uuid4().hex[:12]}.parquet"
        self.publish(name, writer.encode(errors, "parquet"), owner=f"shard {shard_id}")
        return name

    # -- manifest --------------------------------------------------------------------------

    def read_manifest(self) -> bytes | None:
        """The bytes of `_manifest.json`, or None when there is none."""
        return self.read_file(MANIFEST_NAME)

    def read_file(self, rel: str) -> bytes | None:
        """The bytes of `rel`, or None when there is no such file."""
        try:
            with self.fs.open_input_stream(self.file(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def save_manifest(self, body: bytes) -> None:
        """Replace `_manifest.json` atomically: a failed save leaves the previous one intact."""
        try:
            self.publish(MANIFEST_NAME, redact(body.decode()).encode())
        except OutputWriteError as e:
            raise OutputWriteError(f"saving {self.show(MANIFEST_NAME)} failed ({e.__cause__}); "
                                   "the previous manifest is intact: free space, then rerun to "
                                   "resume") from e.__cause__

    def append(self, rel: str, data: bytes, fd: int | None = None) -> int:
        """Append `data` to the local file `rel` and fsync it (durable when this returns); `fd`:
        the descriptor a previous call returned (kept open by the caller)."""
        try:
            if fd is None:
                os.makedirs(os.path.dirname(self.file(rel)), exist_ok=True)
                fd = os.open(self.file(rel), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                _fsync_dir(os.path.dirname(self.file(rel)))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            return fd
        except OSError as e:
            raise OutputWriteError(f"appending to {self.show(rel)} failed ({e}); the shards committed "
                                   "before are kept: free space, then rerun to resume") from e

        # -- reading ---------------------------------------------------------------------------

    def read_part(self, rel: str, columns: list[str] | None = None, size: int | None = None) -> pa.Table:
        """A part (or an `_errors/` file), Parquet or Arrow IPC by its extension. `size`: its
        size when known (a manifest record's `bytes`; a resume checked it against the listing):
        a Parquet part is then read without a HEAD request."""
        return writer.read(self.fs, self.file(rel), columns, size)

    def read_parts(self, records, columns: list[str] | None = None):
        """Yield the table of each manifest record (`{"path": ..., "bytes": ...}`) in the order given."""
        for record in records:
            yield self.read_part(record["path"], columns, record.get("bytes"))

    # -- listing and cleaning ----------------------------------------------------------------

    def files(self) -> list[str]:
        """Every file in the folder, relative to it, sorted (none when the folder is missing)."""
        return sorted(self.sizes())

    def sizes(self, rel: str = "") -> dict[str, int]:
        """{relative path: size} of every file in the folder (or its subfolder `rel`): one
        listing (one request per 1,000 objects on an object store)."""
        base = self.file(rel) if rel else self.path
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {i.path[len(self.path):].lstrip("/"): i.size for i in infos if i.is_file}

    def list_files(self, rel: str) -> list[str]:
        """Files under the subfolder `rel`, relative to the output folder, sorted."""
        return sorted(self.sizes(rel))

    def stray_files(self, keep: set[str], listing: dict | None = None) -> list[str]:
        """Files the pipeline wrote here that `keep` (relative paths) does not name: parts and
        error files of uncommitted shards, temporaries of interrupted writes, commit files no
        manifest names. `listing`: a `sizes()` result to use instead of listing again."""
        listing = self.sizes() if listing is None else listing
        return sorted(rel for rel in listing if is_ours(rel) and rel not in keep and rel != MANIFEST_NAME)

    def remove(self, rels) -> None:
        for rel in rels:
            self.fs.delete_file(self.file(rel))

    def remove_quietly(self, rels) -> None:
        """Delete what exists of `rels` (a file that is already gone is no error)."""
        for rel in rels:
            self._remove_quietly(self.file(rel))

    def remove_tree(self, rel: str) -> None:
        """Delete the subfolder `rel` and everything in it (object stores: in bulk requests)."""
        try:
            self.fs.delete_dir(self.file(rel))
        except FileNotFoundError:
            pass

    def remove_strays(self, keep: set[str], listing: dict | None = None) -> list[str]:
        """Delete `stray_files(keep)`; returns what was deleted (one already gone, say since
        `listing` was taken, is no error)."""
        strays = self.stray_files(keep, listing)
        self.remove_quietly(strays)
        return strays

    def check_usable(self) -> None:
        """Refuse a file, and a folder holding files the pipeline did not write and no manifest
        (a fresh run would mix them in, and a user's folder must never be taken over). A folder
        with a manifest is ours: other files there (an index, notes) are left alone."""
        kind = self.fs.get_file_info(self.path).type
        if kind == pafs.FileType.NotFound:
            self._check_creatable()
            return
        if kind != pafs.FileType.Directory:
            raise OutputFolderError(f"output {str(self)!r} is a file, not a folder; pass a folder path")
        if self.exists(MANIFEST_NAME):
            return
        foreign = [rel for rel in self.files() if not is_ours(rel)]
        if foreign:
            shown = ", ".join(foreign[:_SHOW]) + (f" (and {len(foreign) - _SHOW} more)"
                                                  if len(foreign) > _SHOW else "")
            raise OutputFolderError(
                f"output folder {str(self)!r} holds {len(foreign)} file(s) the pipeline did not write and "
                f"no {MANIFEST_NAME}: {shown}. Write to a new or empty folder (the pipeline never "
                "deletes files it did not write)")

    def _check_creatable(self) -> None:
        """A missing local folder must be creatable: its nearest existing parent is a folder."""
        if not self.is_local:
            return  # object stores have no real folders
        parent = os.path.dirname(self.path)
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise OutputFolderError(f"output {str(self)!r} cannot be created: {parent} is a file; pass "
                                    "a folder path")

    def _remove_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except OSError:
            pass  # never created, or the folder itself is gone: nothing to remove



def _delayed_open(location):
    """An S3 URI with `allow_delayed_open=true` (unless given): pyarrow then writes an object
    under 5 MB with one PUT instead of a 3-request multipart upload."""
    text = os.fspath(location)
    if not text.startswith("s3://") or "allow_delayed_open" in text:
        return location
    return text + ("&" if "?" in text else "?") + "allow_delayed_open=true"


def _fsync_dir(path: str) -> None:
    """Make a new file's name durable (its folder's entry), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
