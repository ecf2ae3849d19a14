"""Narrowing a failing shard down to its bad rows (`pipeline/execution/narrow.py`, issue 24), driven here
the way the pool drives it: each probe "fails" when its rows include a bad one. The end-to-end
run with a real actor SIGKILLed by one row is tests/pipeline/test_pipeline_crash.py::
test_a_row_that_kills_its_worker_is_isolated_and_the_rest_embedded."""
from __future__ import annotations

import pytest

from pipeline.errors import ShardFailedError
from pipeline.execution.narrow import FANOUT, MAX_BAD_ROWS, Job, Narrowing
from pipeline.inputs.shards import plan_shards, read_shard, sub_shard
from pipeline.inputs.sources import Fragment


def narrow(shard, bad_rows: set[int]):
    """Run the narrowing to its end; (the final job, how many probes failed)."""
    narrowing, failures = Narrowing(), 0
    queue = narrowing.start(shard, RuntimeError("the actor died"))
    while queue:
        job = queue.pop(0)
        if not job.probe:
            assert not queue and not narrowing.active
            return job, failures
        rows = range(job.shard.row_offset, job.shard.row_offset + job.shard.num_rows)
        if bad_rows.intersection(rows):
            failures += 1
            queue[:0] = narrowing.failed(job, RuntimeError(f"died on {sorted(bad_rows)}"))
        else:
            queue[:0] = narrowing.passed(job)
    raise AssertionError("no final job")


def test_one_bad_row_is_found_in_log_fanout_failures():
    shard, = plan_shards([Fragment("a", 60), Fragment("b", 140)], 200)
    final, failures = narrow(shard, {137})
    assert final.shard == shard and not final.probe and [r for r, _ in final.bad] == [137]
    assert final.bad[0][1] == "the row fails alone (RuntimeError: died on [137]); not processed"
    assert failures == 3  # 200 rows -> pieces of 25 -> 3 or 4 -> 1: one crash per level (FANOUT 8)
    assert FANOUT == 8


def test_rows_that_all_pass_give_a_final_job_without_bad_rows():
    shard, = plan_shards([Fragment("a", 20)], 20)
    final, failures = narrow(shard, set())
    assert final == Job(shard) and failures == 0


def test_several_bad_rows_and_too_many():
    shard, = plan_shards([Fragment("a", 100)], 100)
    final, _ = narrow(shard, {3, 4, 99})
    assert [r for r, _ in final.bad] == [3, 4, 99]
    with pytest.raises(ShardFailedError, match=f"more than {MAX_BAD_ROWS} of its rows fail alone"):
        narrow(shard, set(range(0, 100, 5)))  # every forward fails: not a row's fault


def test_a_piece_reads_exactly_its_rows_across_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipeline.config import PipelineConfig
    from pipeline.inputs.sources import open_source
    for name, rows in (("a", range(0, 60)), ("b", range(60, 200))):  # the text is the global row
        pq.write_table(pa.table({"text": [str(r) for r in rows]}), tmp_path / f"{name}.parquet",
                       row_group_size=16)
    source = open_source(str(tmp_path), PipelineConfig())
    shard, = plan_shards(source.fragments, 200)
    piece = sub_shard(shard, 55, 70)
    assert (piece.index, piece.row_offset, piece.num_rows) == (0, 55, 15)
    assert read_shard(source, piece, ["text"]).column("text").to_pylist() == [str(r) for r in range(55, 70)]
