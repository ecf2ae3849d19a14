"""The finish step (pipeline/output/finish.py): the duplicate-id pass (DuckDB, within its default
and a small memory limit, spilling), `_errors.parquet`, the manifest marked complete, strays
removed, the in-memory error records. Real parts in a real folder; no Ray, no engine."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.output.finish import (DUPLICATE_ID, duplicate_id_errors, finish, memory_errors, output_errors,
                             write_errors_file)
from pipeline.output.id_spool import IdSpool, id_batch
from pipeline.output.manifest import Manifest, read_manifest
from pipeline.output.output_folder import ERRORS_FILE, OutputFolder
from pipeline.output.progress import RunStats
from pipeline.inputs.shards import Shard
from pipeline.inputs.validate import errors_table
from pipeline.output.writer import part_table


def build_output(path, ids, shard_rows=10, bad=None, id_column="doc"):
    """An output folder with committed parts holding `ids`; `bad`: {shard: [(row, id)]} bad rows
    (recorded in the shard's error file, not in its part)."""
    folder = OutputFolder.open(path)
    folder.create()
    manifest = Manifest.new(folder, {"id_column": id_column}, {"shard_rows": shard_rows})
    bad = bad or {}
    offset = 0
    for k, start in enumerate(range(0, len(ids), shard_rows)):
        chunk = ids[start:start + shard_rows]
        shard_id = f"{k:06d}"
        errors = bad.get(k, [])
        record = folder.publish_part(shard_id, part_table(pa.array(chunk), np.zeros((len(chunk), 4), np.float32),
                                                           None, "float32", {}), "parquet")
        if errors:
            record["errors"] = folder.publish_errors(shard_id, errors_table(
                pa.array([e[1] for e in errors]), [shard_id] * len(errors), [e[0] for e in errors],
                ["text column 'text' is null"] * len(errors)))
        manifest.commit(shard_id, {**record, "row_offset": offset, "input_rows": len(chunk) + len(errors)})
        offset += len(chunk) + len(errors)
    return folder, manifest


def test_duplicate_id_errors_lists_every_occurrence_in_and_across_shards():
    ids = pa.array(["a", "b", "a", "c", None, "b", None, "d"])
    shards = pa.array(np.array([0, 0, 0, 1, 1, 1, 2, 2], np.int32))
    rows = pa.array(np.arange(8, dtype=np.int64))
    got = duplicate_id_errors(ids, shards, rows).to_pylist()
    assert [(e["id"], e["shard"], e["row"]) for e in got] == [
        ("a", "000000", 0), ("b", "000000", 1), ("a", "000000", 2), (None, "000001", 4),
        ("b", "000001", 5), (None, "000002", 6)]
    assert {e["reason"] for e in got} == {DUPLICATE_ID}
    assert duplicate_id_errors(pa.array(["x", "y"]), shards.slice(0, 2), rows.slice(0, 2)).num_rows == 0


def test_duplicate_pass_within_a_small_memory_limit_finds_the_same_rows(tmp_path):
    """The id pass held to a small DuckDB memory_limit lists exactly what the pass with the
    default limit lists, and what counting the ids lists: string ids, integer ids, a null id;
    on 200,000 ids the small limit makes DuckDB spill to disk, with the same rows found."""
    for ids in ([f"d{i % 23}" for i in range(60)], [i % 17 for i in range(59)] + [None]):
        folder, manifest = build_output(tmp_path / f"out-{type(ids[0]).__name__}", ids)
        whole, _, n_whole = output_errors(folder, manifest)
        small, _, n_small = output_errors(folder, manifest, memory_limit="16MB", threads=1)
        assert n_whole == n_small > 0
        assert small.to_pylist() == whole.to_pylist()
        assert small.schema.field("id").type == pa.array(ids).type
        counts = {i: ids.count(i) for i in ids}
        assert n_whole == sum(c for c in counts.values() if c > 1)
        assert whole.column("row").to_pylist() == [r for r, i in enumerate(ids) if counts[i] > 1]
    ids = [f"doc-{i % 180_000:012d}" for i in range(200_000)]  # rows 0..19,999 repeat at 180,000..
    folder, manifest = build_output(tmp_path / "big", ids, shard_rows=20_000)
    stats = {}
    table, _, duplicates = output_errors(folder, manifest, memory_limit="16MB", threads=1, stats=stats)
    assert stats["spilled_bytes"] > 0  # DuckDB's peak temporary-folder size
    assert duplicates == 40_000
    assert table.column("row").to_pylist() == [*range(20_000), *range(180_000, 200_000)]
    assert table.column("shard").to_pylist()[::20_000] == ["000000", "000009"]
    assert table.column("id").to_pylist()[20_000] == ids[0]


def test_ids_whose_hashes_collide_are_not_reported(tmp_path, monkeypatch):
    """The pass groups a hash of each id first: with the hash narrowed to 3 values every id
    collides with many others, and still only the ids that really repeat are listed (a
    repeated null among them), every occurrence, in row order."""
    from pipeline.output import finish
    ids = [f"d{(i // 7) % 5}" if i % 7 == 0 else f"u{i}" for i in range(120)] + [None, None]
    folder, manifest = build_output(tmp_path / "out", ids)
    monkeypatch.setattr(finish, "_HASH", "hash(id) % 3")
    table, _, n = output_errors(folder, manifest)
    counts = {i: ids.count(i) for i in ids}
    expected = [r for r, i in enumerate(ids) if counts[i] > 1]
    assert n == len(expected) > 2 and table.column("row").to_pylist() == expected
    assert table.column("id").to_pylist() == [ids[r] for r in expected]


def test_the_spooled_shards_ids_are_not_read_back_and_the_report_is_the_same(tmp_path, monkeypatch):
    """The ids the actors handed over for the shards this driver committed (the spool) replace
    reading those parts; the other parts are still read. Same report as reading every part:
    rows shifted by bad texts, a null id, an all-null shard (type null in the spool, cast)."""
    ids = ["a", "b", "a", None, "c", None, "c", "d", None, None, None, None, "b", "e"]
    bad = {1: [(5, "x")]}  # shard 1 (rows 4..8) has a bad text at row 5
    folder, manifest = build_output(tmp_path / "out", ids, shard_rows=4, bad=bad)
    whole = output_errors(folder, manifest)
    spool = IdSpool()
    for k, start in ((1, 4), (2, 9)):  # shards 1 and 2 committed by "this driver"
        chunk, rows = ids[k * 4:k * 4 + 4], np.arange(start, start + 5 if k == 1 else start + 4)
        keep = None if k == 2 else rows != 5
        shard = Shard(k, start, len(rows), ())
        spool.add(f"{k:06d}", id_batch(pa.array(chunk) if k == 1 else pa.nulls(4), shard, keep))
    spool.add("000099", id_batch(pa.array(["a"]), Shard(99, 99, 1, ()), None))  # not committed: ignored
    read = []
    original = OutputFolder.read_part
    monkeypatch.setattr(OutputFolder, "read_part", lambda self, rel, *a: read.append(rel) or original(self, rel, *a))
    assert output_errors(folder, manifest, spool=spool)[0].to_pylist() == whole[0].to_pylist()
    assert whole[2] == 12 and whole[1] == 1
    parts = sorted(r for r in read if r.startswith("part-"))
    assert [p[5:11] for p in parts] == ["000000", "000003"]  # shards 1 and 2 came from the spool
    spool.close()
    assert not list(spool.batches())


def test_a_spool_the_disk_refuses_is_dropped_with_a_warning(tmp_path, monkeypatch, caplog):
    spool = IdSpool()
    spool.add("000000", id_batch(pa.array(["a"]), Shard(0, 0, 1, ()), None))
    monkeypatch.setattr(spool, "_writer", None)  # the next add opens a file ...
    monkeypatch.setattr(pa, "OSFile", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    spool.add("000001", id_batch(pa.array(["b"]), Shard(1, 1, 1, ()), None))  # ... which fails
    assert spool.shards == set() and "could not be kept on local disk" in caplog.text
    folder, manifest = build_output(tmp_path / "out", ["a", "a"], shard_rows=1)
    assert output_errors(folder, manifest, spool=spool)[2] == 2  # every part read instead


def test_rows_of_bad_texts_shift_the_global_rows_of_duplicates(tmp_path):
    # shard 0 holds input rows 0..4; row 1 was a bad text, so its part holds rows 0, 2, 3, 4.
    folder, manifest = build_output(tmp_path / "out", ["x", "y", "x", "z", "w", "y"], shard_rows=4,
                                    bad={0: [(1, "bad")]})
    table, bad_rows, duplicates = output_errors(folder, manifest)
    assert (bad_rows, duplicates) == (1, 4)
    assert [(e["id"], e["row"], e["reason"]) for e in table.to_pylist()] == [
        ("x", 0, DUPLICATE_ID), ("bad", 1, "text column 'text' is null"), ("y", 2, DUPLICATE_ID),
        ("x", 3, DUPLICATE_ID), ("y", 6, DUPLICATE_ID)]


def test_without_an_id_column_the_id_pass_is_skipped(tmp_path):
    folder, manifest = build_output(tmp_path / "out", [1, 1, 1], id_column=None)
    assert output_errors(folder, manifest)[1:] == (0, 0)


def test_errors_file_published_then_removed_when_nothing_is_reported(tmp_path):
    folder, manifest = build_output(tmp_path / "out", ["a", "a", "b"])
    assert write_errors_file(folder, manifest) == (0, 2)
    assert pq.read_table(folder.file(ERRORS_FILE)).column("id").to_pylist() == ["a", "a"]
    manifest.fingerprint["id_column"] = None  # the same folder, nothing to report any more
    assert write_errors_file(folder, manifest) == (0, 0)
    assert not folder.exists(ERRORS_FILE)


def test_finish_removes_strays_reports_and_marks_complete(tmp_path, capsys):
    folder, manifest = build_output(tmp_path / "out", ["a", "b", "a"])
    folder.publish_part("000009", part_table(pa.array(["late"]), np.zeros((1, 4), np.float32), None,
                                             "float32", {}), "parquet")  # an orphaned actor's part
    stats = RunStats(rows=3, rows_total=3, tokens=30, seconds=1.0, startup_seconds=0.1, truncated=0,
                     bad_rows=0, shards=1, resumed_shards=0, retries=0, workers=())
    result = finish(stats, None, manifest, folder, PipelineConfig(id_column="doc"))
    assert (result.output, result.stats.duplicate_ids, result.stats.bad_rows_total) == (folder.location, 2, 0)
    saved = read_manifest(tmp_path / "out")
    assert saved["complete"] and saved["summary"]["duplicate_ids"] == 2
    assert sorted(folder.files()) == sorted([*manifest.files(), "_manifest.json", ERRORS_FILE])
    assert str(folder) in capsys.readouterr().out  # the summary names the folder


def test_in_memory_errors_and_matrix_rows():
    s0, s1 = Shard(0, 0, 3, ()), Shard(1, 3, 3, ())
    parts = {1: (s1, None, [{"id": "n", "shard": "000001", "row": 4, "reason": "null"}], pa.array(["a", "c"])),
             0: (s0, None, [], pa.array(["a", "b", "c"]))}
    errors, duplicates = memory_errors(parts, check_ids=True)
    assert duplicates == 4
    assert [(e["id"], e["row"], e["reason"]) for e in errors] == [
        ("a", 0, DUPLICATE_ID), ("c", 2, DUPLICATE_ID), ("a", 3, DUPLICATE_ID), ("n", 4, "null"),
        ("c", 5, DUPLICATE_ID)]
    assert memory_errors(parts, check_ids=False) == ([{"id": "n", "shard": "000001", "row": 4, "reason": "null"}], 0)


def test_a_new_spool_removes_those_of_drivers_no_longer_running(tmp_path, monkeypatch):
    """A killed driver never closes its spool (gigabytes at 10^9 rows): the next spool on the
    machine removes it; a running driver's spool, and a folder without a pid, are kept."""
    import subprocess
    import tempfile
    ended = subprocess.Popen(["true"])
    ended.wait()  # exited and reaped: its pid runs nothing (until reused)
    dead = tmp_path / f"pipeline-id-spool-{ended.pid}-x"
    alive_proc = subprocess.Popen(["sleep", "60"])
    try:
        alive = tmp_path / f"pipeline-id-spool-{alive_proc.pid}-y"
        other = tmp_path / "pipeline-id-spool-abc"
        for path in (dead, alive, other):
            path.mkdir()
            (path / "000000.arrow").write_bytes(b"x")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        spool = IdSpool()
        spool.add("000000", id_batch(pa.array(["a"]), Shard(0, 0, 1, ()), None))
        left = sorted(p.name for p in tmp_path.iterdir())
        mine = [n for n in left if n.startswith(f"pipeline-id-spool-{os.getpid()}-")]
        assert dead.name not in left and {alive.name, other.name} <= set(left) and len(mine) == 1
        spool.close()
        assert not (tmp_path / mine[0]).exists()
    finally:
        alive_proc.kill()
        alive_proc.wait()
