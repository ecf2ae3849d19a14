"""The output folder (pipeline/output/output_folder.py): location parsing, atomic publish, the manifest's
bytes, stray files, the usability check, reading parts back. Real pyarrow filesystems, no Ray."""
from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import OutputFolderError, OutputWriteError
from pipeline.fs import filesystem
from pipeline.output.output_folder import MANIFEST_NAME, OutputFolder, absolute, is_ours, is_uri, redact
from pipeline.inputs.validate import errors_table
from pipeline.output.writer import part_table

FP = {"engine": {"model_hash": "abc"}}
# An S3 URI parsed without any network: the region is given, the endpoint is a closed local port.
S3 = "s3://KEY:SECRET@bucket/runs/out?region=us-east-1&endpoint_override=127.0.0.1:9&scheme=http"


def part(ids):
    return part_table(pa.array(ids), np.zeros((len(ids), 2), np.float32), None, "float32", FP)


def test_local_paths_become_absolute_and_uris_keep_their_scheme(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = OutputFolder.open("emb/run1")
    assert folder.path == folder.location == str(tmp_path / "emb" / "run1")
    assert folder.fs.type_name == "local" and folder.atomic_rename and folder.is_local
    assert OutputFolder.open(tmp_path / "x").path == str(tmp_path / "x")  # a pathlib.Path
    assert not is_uri("emb/run1") and not is_uri(tmp_path) and is_uri("file:///tmp/x")
    assert absolute("a/b") == str(tmp_path / "a" / "b") and absolute("gs://b/x") == "gs://b/x"
    file_uri = OutputFolder.open(f"file://{tmp_path}/u")
    assert (file_uri.path, file_uri.fs.type_name, file_uri.atomic_rename) == (f"{tmp_path}/u", "local", True)


def test_s3_uri_parsed_offline_and_credentials_never_shown():
    fs, path = filesystem(S3)
    assert (fs.type_name, path) == ("s3", "bucket/runs/out")
    folder = OutputFolder.open(S3)
    assert folder.location == S3 and not folder.atomic_rename and not folder.is_local
    assert "SECRET" not in str(folder) and str(folder).startswith("s3://***@bucket/runs/out")
    assert "SECRET" not in folder.show("part-000000-ab.parquet")
    assert redact("/local/p@th") == "/local/p@th" and redact("s3://bucket/x") == "s3://bucket/x"


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_publish_part_round_trip_and_no_temporary_left(tmp_path, fmt):
    folder = OutputFolder.open(tmp_path)
    record = folder.publish_part("000003", part([10, 11, 12]), fmt)
    path = tmp_path / record["path"]
    assert record["path"].startswith("part-000003-") and record["path"].endswith("." + fmt)
    assert record["rows"] == 3 and record["bytes"] == path.stat().st_size
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert os.listdir(tmp_path) == [record["path"]]
    assert folder.read_part(record["path"], ["id"]).column("id").to_pylist() == [10, 11, 12]
    again = folder.publish_part("000003", part([10, 11, 12]), fmt)  # a retry: a new name
    assert again["path"] != record["path"] and len(os.listdir(tmp_path)) == 2


def test_publish_is_atomic_a_reader_sees_old_or_new_never_partial(tmp_path):
    """Readers racing a replacing publish (the manifest's case) only ever see a whole file."""
    folder = OutputFolder.open(tmp_path)
    old, new = b"o" * 4_000_000, b"n" * 4_000_000
    folder.publish("f.bin", old)
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            data = (tmp_path / "f.bin").read_bytes()
            seen.add((len(data), data[:1], data[-1:]))

    reader = threading.Thread(target=read)
    reader.start()
    for data in (new, old) * 5:
        folder.publish("f.bin", data)
    stop.set()
    reader.join()
    assert seen <= {(4_000_000, b"o", b"o"), (4_000_000, b"n", b"n")} and seen
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_local_publish_makes_the_bytes_then_the_name_durable(tmp_path, monkeypatch):
    """Locally the temporary is fsynced before its rename, and the folders holding the new name
    after it: a commit record (fsynced) then never names a file that a machine crash can empty.
    os.fsync and os.replace are observed here (each still runs), not replaced."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", source, target))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    folder = OutputFolder.open(tmp_path / "out")
    folder.create()
    assert events == [("fsync", str(tmp_path))]  # the new folder's name
    events.clear()
    folder.publish("_errors/000001-ab.parquet", b"data")
    (_, temporary), moved, *folders = events
    final = str(tmp_path / "out" / "_errors" / "000001-ab.parquet")
    assert os.path.basename(temporary).startswith(".part-") and moved == ("replace", temporary, final)
    assert folders == [("fsync", str(tmp_path / "out" / "_errors")), ("fsync", str(tmp_path / "out"))]
    assert (tmp_path / "out" / "_errors" / "000001-ab.parquet").read_bytes() == b"data"


def test_failed_publish_leaves_nothing_and_names_the_file(tmp_path):
    folder = OutputFolder.open(tmp_path)
    (tmp_path / "part-000001-aa.parquet").mkdir()  # a folder where the file must go: rename fails
    with pytest.raises(OutputWriteError, match=r"shard 000001: writing .*part-000001-aa.parquet failed"
                                              r".*nothing was published.*rerun to resume"):
        folder.publish("part-000001-aa.parquet", b"data", owner="shard 000001")
    assert os.listdir(tmp_path) == ["part-000001-aa.parquet"]  # the temporary was removed


class _RecordingLocal(LocalFileSystem):
    """fsspec's local filesystem, recording every path opened for writing and every move."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes, self.moves = [], []

    def _open(self, path, mode="rb", *args, **kwargs):
        if "w" in mode:
            self.writes.append(os.path.basename(path))
        return super()._open(path, mode, *args, **kwargs)

    def mv(self, path1, path2, **kwargs):
        self.moves.append((path1, path2))
        return super().mv(path1, path2, **kwargs)


def test_non_posix_filesystem_publish_is_one_write_without_rename(tmp_path):
    """Where rename is not known to be atomic (object stores, fsspec wrappers), the bytes go in
    one write straight to the final name; on the local filesystem via a renamed temporary."""
    spy = _RecordingLocal(skip_instance_cache=True)
    folder = OutputFolder(pafs.PyFileSystem(pafs.FSSpecHandler(spy)), str(tmp_path), str(tmp_path))
    assert not folder.atomic_rename
    record = folder.publish_part("000000", part([1]), "parquet")
    assert spy.writes == [record["path"]] and spy.moves == []
    assert os.listdir(tmp_path) == [record["path"]]
    assert folder.read_part(record["path"]).column("id").to_pylist() == [1]


def test_manifest_bytes_saved_by_replace_and_loaded(tmp_path):
    folder = OutputFolder.open(tmp_path)
    assert folder.read_manifest() is None
    folder.save_manifest(b'{"version": 1}')
    folder.save_manifest(b'{"version": 1, "x": 2}')
    assert folder.read_manifest() == b'{"version": 1, "x": 2}'
    assert os.listdir(tmp_path) == [MANIFEST_NAME]


def test_stray_files_are_ours_and_uncommitted_only(tmp_path):
    folder = OutputFolder.open(tmp_path)
    kept = folder.publish_part("000000", part([0]), "parquet")["path"]
    stray = folder.publish_part("000001", part([1]), "parquet")["path"]
    errors = folder.publish_errors("000001", errors_table(pa.array([1]), ["000001"], [1], ["null"]))
    folder.save_manifest(b"{}")
    (tmp_path / ".part-0123.tmp").write_text("half written")
    (tmp_path / "_manifest.json.0a1b.tmp").write_text("an older version's temporary")
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / "part-of-my-thesis.parquet").write_text("the user's")
    expected = sorted([".part-0123.tmp", "_manifest.json.0a1b.tmp", errors, stray])
    assert folder.stray_files(keep={kept}) == expected
    assert folder.remove_strays(keep={kept}) == expected
    assert sorted(folder.files()) == sorted([kept, MANIFEST_NAME, "notes.txt", "part-of-my-thesis.parquet"])
    assert is_ours("_errors.parquet") and not is_ours("index.faiss")


def test_check_usable_refuses_files_and_foreign_folders(tmp_path):
    OutputFolder.open(tmp_path / "new").check_usable()  # missing: fine, created later
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        OutputFolder.open(tmp_path / "file").check_usable()
    with pytest.raises(OutputFolderError, match=r"cannot be created: .*file is a file"):
        OutputFolder.open(tmp_path / "file" / "sub").check_usable()
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.docx").write_text("x")
    with pytest.raises(OutputFolderError, match=r"holds 1 file\(s\) the pipeline did not write.*thesis.docx"):
        OutputFolder.open(user).check_usable()
    (user / MANIFEST_NAME).write_text("{}")
    OutputFolder.open(user).check_usable()  # a folder with a manifest is ours; extra files stay
