"""The part schema, the manifest and the progress/summary text (no Ray, no engine). The output
folder itself (publish, strays, URIs) is tests/pipeline/test_output_folder.py."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.output.manifest import FingerprintMismatch, Manifest, check_resumable, fingerprint_diff
from pipeline.output.output_folder import OutputFolder
from pipeline.output.progress import Progress, RunStats, WorkerStats, summary_table
from pipeline.output.writer import FINGERPRINT_KEY, part_table, to_numpy

FP = {"engine": {"model_hash": "abc", "pooling": "mean", "dimensions": 4}, "text_column": "text"}


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_part_round_trip(tmp_path, fmt, dtype):
    folder = OutputFolder.open(tmp_path)
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    extra = pa.table({"title": ["a", "b", "c", "d", "e"]})
    table = part_table(pa.array(np.arange(10, 15)), vectors, extra, dtype, FP)
    record = folder.publish_part("000003", table, fmt)
    path = tmp_path / record["path"]
    assert record["path"].startswith("part-000003-") and record["path"].endswith("." + fmt)
    assert record["rows"] == 5 and record["bytes"] == path.stat().st_size
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [record["path"]]  # no temporary left behind
    back = folder.read_part(record["path"])
    assert back.column_names == ["id", "embedding", "title"]
    assert back.schema.field("embedding").type == pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), 4)
    assert json.loads(back.schema.metadata[FINGERPRINT_KEY]) == FP
    assert back.column("id").to_pylist() == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(to_numpy(back), vectors.astype(dtype))


def test_to_numpy_multi_chunk_and_sliced():
    vectors = np.arange(24, dtype=np.float32).reshape(6, 4)
    t = part_table(pa.array(range(6)), vectors, None, "float32", FP)
    chunked = pa.concat_tables([t.slice(0, 2), t.slice(2, 3), t.slice(5)])
    np.testing.assert_array_equal(to_numpy(chunked), vectors)
    np.testing.assert_array_equal(to_numpy(t.slice(1, 3)), vectors[1:4])


def test_manifest_commit_is_durable_at_once_and_loads_back(tmp_path):
    folder = OutputFolder.open(tmp_path)
    assert Manifest.load(folder) is None
    m = Manifest.new(folder, FP, {"num_shards": 2, "shard_rows": 10})
    m.save(force=True)
    m.commit("000001", {"path": "part-000001-aa.parquet", "rows": 10})
    assert set(Manifest.load(folder).shards) == {"000001"}  # in the log: no save needed
    m.commit("000000", {"path": "part-000000-bb.parquet", "rows": 10, "errors": "_errors/x.jsonl"})
    loaded = Manifest.load(folder)
    assert loaded.fingerprint == FP and set(loaded.shards) == {"000000", "000001"}
    log = "_commits/log-000000.jsonl"
    assert loaded.files() == {"part-000001-aa.parquet", "part-000000-bb.parquet", "_errors/x.jsonl", log}
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        ["_commits/log-000000.jsonl", "_manifest.json"]
    loaded.finish({"rows": 20})  # complete: the log folded into one segment, the log removed
    loaded.save(force=True)
    again = Manifest.load(folder)
    assert again.data["complete"] and dict(again.shards.items()) == dict(loaded.shards.items())
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        ["_commits/segment-000001.parquet", "_manifest.json"]


def test_fingerprint_mismatch_names_what_differs(tmp_path):
    folder = OutputFolder.open(tmp_path)
    plan = {"source": "parquet", "num_rows": 5, "num_fragments": 1, "input_digest": "d1"}
    m = Manifest.new(folder, FP, plan)
    check_resumable(m, json.loads(json.dumps(FP)), dict(plan))  # same: no error
    other = {**FP, "engine": {**FP["engine"], "dimensions": 2}}
    assert fingerprint_diff(FP, other) == ["engine.dimensions: 4 in the output, 2 in this run"]
    with pytest.raises(FingerprintMismatch) as info:
        check_resumable(m, other, {**plan, "input_digest": "d2"})
    message = str(info.value)
    assert "engine.dimensions: 4 in the output, 2 in this run" in message
    assert "input input_digest: 'd1' in the output, 'd2' in this run" in message
    assert "overwrite" in message


def test_manifest_of_another_version_is_a_fingerprint_mismatch(tmp_path):
    (tmp_path / "_manifest.json").write_text(json.dumps({"version": 99, "shards": {}}))
    with pytest.raises(FingerprintMismatch, match=r"manifest version 99.*overwrite=True"):
        Manifest.load(OutputFolder.open(tmp_path))


def test_progress_lines_and_summary():
    stream = io.StringIO()
    progress = Progress(total_rows=100, done_rows=20, stream=stream)
    progress.update(30, 3000)
    progress.close()
    text = stream.getvalue()
    assert "50/100 rows" in text and "50.0%" in text and "tok/s" in text
    stats = RunStats(rows=30, rows_total=50, tokens=3000, seconds=2.0, startup_seconds=0.5,
                     truncated=1, bad_rows=0, shards=3, resumed_shards=2, retries=0,
                     workers=(WorkerStats(0, 3, 30, 3000, 1.5),))
    table = summary_table(stats, "/out", "parquet")
    assert "1,500 tokens/s overall" in table and "2 shard(s) already done" in table
    assert "2,000" in table  # worker 0 tokens/s over its engine time
    assert stats.to_dict()["workers"][0]["tokens_per_s"] == 2000
    assert "worker time" not in table  # no stage times recorded: no line
    timed = RunStats(rows=30, rows_total=30, tokens=3000, seconds=2.0, startup_seconds=0.5,
                     truncated=0, bad_rows=0, shards=1, resumed_shards=0, retries=0,
                     workers=(WorkerStats(0, 1, 30, 3000, 1.5),), chunked=2,
                     stages={"tokenize": 0.25, "forward": 1.0, "idle": 0.25},
                     read_seconds=0.25, write_seconds=0.25)
    table = summary_table(timed, "/out", "parquet")
    assert "2 embedded in windows" in table
    assert "read 0.2 s (12%) · tokenize 0.2 s (12%) · forward 1.0 s (50%) · idle 0.2 s (12%)" in table


@pytest.mark.parametrize("task, verb", [("embed", "embedded"), ("score", "scored"),
                                        ("classify", "classified")])
def test_progress_and_summary_name_the_task(task, verb):
    stream = io.StringIO()
    progress = Progress(total_rows=10, stream=stream, task=task)
    progress.update(10, 100)
    progress.close()
    assert stream.getvalue().startswith(f"{task} [")
    stats = RunStats(rows=10, rows_total=10, tokens=100, seconds=1.0, startup_seconds=0.1,
                     truncated=0, bad_rows=2, shards=1, resumed_shards=0, retries=0,
                     workers=(WorkerStats(0, 1, 10, 100, 1.0),))
    table = summary_table(stats, None, "parquet", task)
    assert f"rows {verb}" in table and f"2 not {verb}" in table
    assert ("embedded" in table) == (verb == "embedded")
