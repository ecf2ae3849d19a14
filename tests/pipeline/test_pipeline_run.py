"""`pipeline.run` end to end on one local Ray (2 CPUs) with the real engine and default model.

The reference for every vector is `Engine.embed` on the same texts in this process, in float32
(so batch composition cannot move a vector by more than rounding); ids are checked exactly once.
"""
from __future__ import annotations

import doctest
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages
from pipeline.output.manifest import read_manifest

N = 90
F32 = {"dtype": "float32", "progress": False, "threads_per_worker": 1}  # 1-CPU actors: every run can take the warm ones


@pytest.fixture(scope="module")
def texts():
    return ["a"] + sample_passages(N - 1, seed=3, max_chars=300)  # "" is a bad row: test_pipeline_hostile.py


@pytest.fixture(scope="module")
def reference(texts):
    from workers import Engine, EngineConfig
    engine = Engine(EngineConfig(dtype="float32", num_threads=2))
    vectors = engine.embed(texts)
    return vectors, engine.stats.tokens, engine


def assert_vectors(got, want):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def check_output(out, texts, reference, ids):
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == ids  # every row once, in input order
    assert_vectors(pipeline.to_numpy(table), reference[0][: len(texts)])
    manifest = read_manifest(Path(out))
    parts = {r["path"] for r in manifest["shards"].values()}
    assert {p.name for p in Path(out).glob("part-*")} == parts  # nothing uncommitted left
    return table, manifest


def test_list_in_memory_equals_engine(ray_local, texts, reference):
    result = pipeline.run(texts, num_workers=1, shard_rows=25, **F32)
    assert result.output is None and result.manifest is None
    assert_vectors(result.embeddings, reference[0])
    assert result.stats.rows == N and result.stats.shards == 4
    assert result.stats.tokens == reference[1]  # same tokenization, counted once per text


def test_chunked_long_texts_and_worker_traces(ray_local, texts, tmp_path):
    from workers import Engine, EngineConfig
    long = [" ".join(texts[i:i + 30]) for i in range(0, 60, 30)]  # ~2 kB each: several windows
    data = texts[:10] + long
    result = pipeline.run(data, output=str(tmp_path / "out"), num_workers=2, shard_rows=3,
                          truncation="chunk", max_length=128, profile_dir=str(tmp_path / "traces"), **F32)
    engine = Engine(EngineConfig(dtype="float32", truncation="chunk", max_length=128))
    want = engine.embed(data)
    assert_vectors(pipeline.read_embeddings(tmp_path / "out", as_numpy=True), want)
    assert result.stats.chunked == engine.stats.chunked >= 2 and result.stats.truncated == 0
    assert result.manifest["fingerprint"]["engine"]["truncation"] == "chunk"
    # A trace opens at an engine's second batch: each worker that ran two shards wrote one.
    traces = list((tmp_path / "traces").glob("engine-*.json"))
    assert 1 <= len(traces) <= 2 and all(json.loads(t.read_text())["traceEvents"] for t in traces)


def _as(kind, texts, tmp_path):
    import datasets
    import ray
    ids = [f"doc-{i:03d}" for i in range(len(texts))]
    table = pa.table({"doc_id": ids, "text": texts})
    if kind == "table":
        return table
    if kind == "parquet_glob":
        for k, start in enumerate(range(0, len(texts), 40)):
            pq.write_table(table.slice(start, 40), tmp_path / f"in-{k}.parquet", row_group_size=15)
        return str(tmp_path / "in-*.parquet")
    if kind == "hf_folder":
        datasets.Dataset.from_dict(table.to_pydict()).save_to_disk(str(tmp_path / "hf"))
        return str(tmp_path / "hf")
    if kind == "ray_dataset":
        # The warm actor of the previous test holds both CPUs; Ray Data needs one (README).
        pipeline.shutdown()
        return ray.data.from_arrow(table).repartition(3)
    raise AssertionError(kind)


# pandas and in-memory HF datasets become the same object-store table as "table"; every kind is
# read back exactly in test_pipeline_sources.py. These are the four ways rows reach an actor.
@pytest.mark.parametrize("kind", ["table", "parquet_glob", "hf_folder", "ray_dataset"])
def test_every_input_kind_to_parquet(ray_local, texts, reference, tmp_path, kind):
    out = tmp_path / "out"
    result = pipeline.run(_as(kind, texts, tmp_path), output=str(out), id_column="doc_id",
                          num_workers=1, shard_rows=32, **F32)
    assert result.stats.rows == result.stats.rows_total == N and result.embeddings is None
    check_output(out, texts, reference, [f"doc-{i:03d}" for i in range(N)])


def test_two_workers_arrow_float16_passthrough(ray_local, texts, reference, tmp_path):
    data = pa.table({"text": texts, "title": [f"t{i}" for i in range(N)]})
    result = pipeline.run(data, output=str(tmp_path), num_workers=2, shard_rows=10,
                          output_format="arrow", output_dtype="float16",
                          passthrough_columns=("title",), **F32)
    assert [w.shards > 0 for w in result.stats.workers] == [True, True]
    assert sum(w.rows for w in result.stats.workers) == N
    # Per-stage engine times summed over both workers: every stage reported, the forward and
    # tokenizing really measured, and no more engine time than the workers were busy embedding.
    stages = result.stats.stages
    assert list(stages) == ["tokenize", "build", "copy_in", "forward", "copy_out", "idle"]
    assert stages["forward"] > 0 and stages["tokenize"] > 0 and result.stats.write_seconds > 0
    busy = sum(w.busy_seconds for w in result.stats.workers)
    assert stages["forward"] + stages["copy_out"] + stages["idle"] <= busy + 1e-3
    table = pipeline.read_embeddings(tmp_path)
    assert table.column_names == ["id", "embedding", "title"]
    assert table.column("id").to_pylist() == list(range(N))
    assert table.column("title").to_pylist() == [f"t{i}" for i in range(N)]
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    np.testing.assert_allclose(pipeline.read_embeddings(tmp_path, as_numpy=True), reference[0], atol=1e-3)


def test_resume_cleanup_fingerprint_and_overwrite(ray_local, texts, reference, tmp_path):
    first = pipeline.run(texts, output=str(tmp_path), shard_rows=30, **F32)
    (tmp_path / first.manifest["shards"]["000001"]["path"]).unlink()  # a committed part lost
    (tmp_path / "part-000002-0123456789ab.parquet").write_bytes(b"crash leftover")
    (tmp_path / ".part-deadbeef.tmp").write_bytes(b"half written")
    again = pipeline.run(texts, output=str(tmp_path), shard_rows=7, **F32)  # shard size is the manifest's
    assert (again.stats.rows, again.stats.resumed_shards, again.stats.rows_total) == (30, 2, N)
    assert not (tmp_path / "part-000002-0123456789ab.parquet").exists()
    assert not (tmp_path / ".part-deadbeef.tmp").exists()
    check_output(tmp_path, texts, reference, list(range(N)))
    # Another input (or columns, output form) is refused before any actor starts; the engine's
    # settings once the actors report their fingerprint.
    with pytest.raises(pipeline.FingerprintMismatch) as info:
        pipeline.run(texts[::-1], output=str(tmp_path), **F32)
    assert "input input_digest" in str(info.value)
    with pytest.raises(pipeline.FingerprintMismatch) as info:
        pipeline.run(texts, output=str(tmp_path), dimensions=64, **F32)
    assert "engine.dimensions: 384 in the output, 64 in this run" in str(info.value)
    small = pipeline.run(texts, output=str(tmp_path), dimensions=64, overwrite=True, **F32)
    assert small.stats.rows == N and pipeline.read_embeddings(tmp_path, as_numpy=True).shape == (N, 64)


def test_null_texts_stop_the_run_or_are_recorded(ray_local, texts, reference, tmp_path):
    with_null = texts[:40] + [None] + texts[40:]
    ids = list(range(N + 1))
    data = pa.table({"text": with_null, "key": [f"k{i}" for i in ids]})
    with pytest.raises(pipeline.ShardFailedError, match=r"shard 000002 \(rows 40..59\).*row 40 \(id 'k40'\)"):
        pipeline.run(data, output=str(tmp_path / "strict"), id_column="key", shard_rows=20,
                     on_bad_row="error", **F32)
    out = tmp_path / "lenient"
    result = pipeline.run(data, output=str(out), id_column="key", shard_rows=20, **F32)  # record
    assert (result.stats.rows, result.stats.bad_rows) == (N, 1)
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == [f"k{i}" for i in ids if i != 40]
    assert_vectors(pipeline.to_numpy(table), reference[0])
    assert pq.read_table(out / "_errors.parquet").to_pylist() == [
        {"id": "k40", "shard": "000002", "row": 40, "reason": "text column 'text' is null"}]
    with pytest.warns(DeprecationWarning, match="skip_bad_rows"):
        in_memory = pipeline.run(with_null, shard_rows=20, skip_bad_rows=True, **F32)
    assert np.isnan(in_memory.embeddings[40]).all() and [e["row"] for e in in_memory.errors] == [40]
    assert_vectors(np.delete(in_memory.embeddings, 40, axis=0), reference[0])


def test_unknown_option_and_file_input_without_output(ray_local, tmp_path):
    with pytest.raises(ValueError, match="unknown option.*'batch_size'"):
        pipeline.run(["a"], batch_size=3)
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="output= is required"):
        pipeline.run(str(tmp_path / "a.parquet"), progress=False)
    with pytest.raises(FileNotFoundError, match="no-such-model.*does not exist"):
        pipeline.run(["a"], model=tmp_path / "no-such-model", progress=False)


def test_docstring_examples(ray_local):
    failures, tried = doctest.testmod(pipeline, verbose=False)
    assert tried >= 6 and failures == 0
