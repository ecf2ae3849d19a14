"""`pipeline.run(task="tokens" | "sparse" | "bge-m3")` end to end on one local Ray (2 CPUs) with
tiny random folders (tests/tiny_models.py): a sentence-transformers MultiVectorEncoder, a
SPLADE SparseEncoder and a bge-m3 XLM-R with its two side heads.

The reference for every stored value is the engine in this process (`Engine.embed_tokens`,
`.embed_sparse`, `.embed_m3`, float32), which tests/workers/test_tokens.py, test_sparse.py and
test_bge_m3.py check against sentence-transformers and a plain torch bge-m3. Token vectors are
stored as float16 by default: they must equal the engine's float32 vectors cast to float16 (to
one float16 step, since the actor packs other batches). The kill points are the test-only hooks
of tests/pipeline/test_pipeline_crash.py (`PIPELINE_CRASH_FILE`, `PIPELINE_CRASH_AT`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

import pipeline
from pipeline.output import part_size
from pipeline.errors import InputError
from pipeline.inputs.samples import sample_passages
from tiny_models import make_tiny_bge_m3, make_tiny_multi_vector, make_tiny_splade
from pipeline.output.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
N = 20
BAD = {4: None, 13: "  \t"}
REASONS = {4: "text column 'text' is null", 13: "text column 'text' is whitespace only"}
GOOD = [i for i in range(N) if i not in BAD]
# A multi-vector row of the tiny folder: 20 document tokens x 24 dims x 2 bytes + 64 = 1,024
# bytes at most, so 4,096 bytes per part plans 4 rows per shard: 5 shards.
PART_BYTES, ROWS_PER_PART = 4096, 4
COMMON = {"id_column": "pid", "dtype": "float32", "progress": False, "threads_per_worker": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_multi_vector(root / "mv")
    make_tiny_splade(root / "splade")
    make_tiny_bge_m3(root / "m3")
    return {"tokens": root / "mv", "sparse": root / "splade", "bge-m3": root / "m3"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(Parquet folder of two files: pid, text, lang; the table) with two bad rows."""
    texts = sample_passages(N, seed=9, max_chars=200)
    for row, text in BAD.items():
        texts[row] = text
    table = pa.table({"pid": [f"p{i:02d}" for i in range(N)], "text": texts, "lang": ["en"] * N})
    folder = tmp_path_factory.mktemp("corpus")
    pq.write_table(table.slice(0, 9), folder / "a.parquet")
    pq.write_table(table.slice(9), folder / "b.parquet")
    return str(folder), table


@pytest.fixture(scope="module")
def expected(models, corpus):
    """task -> the in-process engine's float32 outputs for the good rows."""
    from workers import Engine, EngineConfig
    texts = corpus[1].column("text").to_pylist()
    good = [texts[i] for i in GOOD]

    def engine(task, **kw):
        return Engine(EngineConfig(model=str(models[task]), task=task, dtype="float32", num_threads=1, **kw))
    return {"tokens": engine("tokens").embed_tokens(good),
            "sparse": engine("sparse").embed_sparse(good),
            "bge-m3": engine("bge-m3", allow_pickle=True).embed_m3(good)}


def assert_tokens(stored, want, dtype=np.float16):
    assert len(stored) == len(want)
    for s, w in zip(stored, want):
        assert s.dtype == dtype and s.shape == w.shape
        np.testing.assert_allclose(s.astype(np.float32), w.astype(dtype).astype(np.float32),
                                   atol=1e-3 if dtype == np.float16 else 1e-5, rtol=0)


def assert_sparse(stored, want):
    assert len(stored) == len(want)
    for (si, sv), (wi, wv) in zip(stored, want):
        np.testing.assert_array_equal(si, wi)
        np.testing.assert_allclose(sv, wv, atol=1e-5, rtol=0)


def assert_errors(out: Path):
    errors = pq.read_table(out / "_errors.parquet").to_pylist()
    assert {e["row"]: e["reason"] for e in errors} == REASONS
    assert [e["id"] for e in errors] == [f"p{i:02d}" for i in sorted(BAD)]


# -- refused before Ray starts, and the part-size arithmetic ---------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"task": "tokens", "output_dtype": "int8"}, "int8 and ubinary are for task='embed' only"),
    ({"task": "sparse", "output_dtype": "float16"}, "task='sparse', which stores float32"),
    ({"task": "bge-m3", "output_dtype": "ubinary"}, "pass one of \\['float16', 'float32'\\]"),
    ({"task": "tokens", "passthrough_columns": ("num_tokens",)}, "clash with the output columns"),
    ({"task": "tokens", "max_part_bytes": 0}, "max_part_bytes=0 must be a positive integer"),
])
def test_token_task_options_are_refused(models, options, message):
    was_up = ray.is_initialized()
    with pytest.raises(InputError, match=message):
        pipeline.run(["a passage"], model=models["tokens"], progress=False, **options)
    assert ray.is_initialized() == was_up


def test_part_size_bound_from_the_folder(models):
    assert part_size.row_bytes("tokens", "float16", {"model": str(models["tokens"])}) == 20 * 24 * 2 + 64
    assert part_size.row_bytes("tokens", "float32", {"model": str(models["tokens"])}) == 20 * 24 * 4 + 64
    # bge-m3: max_length x hidden (colbert <= hidden) + dense + (index, value) per token
    m3 = {"model": str(models["bge-m3"]), "allow_pickle": True, "max_length": 10}
    assert part_size.row_bytes("bge-m3", "float16", m3) == 10 * 32 * 2 + 64 + 4 * 32 + 8 * 10
    assert part_size.row_bytes("embed", "float32", {}) is None
    assert part_size.bounded_rows(1000, PART_BYTES, 1024) == ROWS_PER_PART
    assert part_size.bounded_rows(3, PART_BYTES, 1024) == 3
    assert part_size.bounded_rows(1000, 100, 1024) == 1  # never below one row
    assert part_size.bounded_rows(1000, None, 1024) == 1000


# -- end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokens_reference(cluster, models, corpus, expected, tmp_path_factory):
    """The uninterrupted 2-worker tokens run, parts bounded to 4,096 bytes."""
    out = tmp_path_factory.mktemp("tokens") / "out"
    result = pipeline.run(corpus[0], output=str(out), model=models["tokens"], task="tokens",
                          num_workers=2, passthrough_columns=("lang",), max_part_bytes=PART_BYTES,
                          **COMMON)
    assert result.stats.rows == len(GOOD) and result.stats.bad_rows_total == len(BAD)
    assert result.manifest["plan"]["shard_rows"] == ROWS_PER_PART
    assert len(result.manifest["shards"]) == N // ROWS_PER_PART  # several bounded parts
    fingerprint = result.manifest["fingerprint"]
    assert fingerprint["engine"]["task"] == "tokens" and fingerprint["side"] == "document"
    assert fingerprint["output_dtype"] == "float16"
    return out, check_tokens(out, expected)


def check_tokens(out: Path, expected) -> pa.Table:
    table = pipeline.read_tokens(out)
    assert table.column_names == ["id", "tokens", "num_tokens", "lang"]
    assert table.schema.field("tokens").type == pa.list_(pa.list_(pa.float16(), 24))
    assert table.schema.field("num_tokens").type == pa.int32()
    assert table.column("id").to_pylist() == [f"p{i:02d}" for i in GOOD]
    want = expected["tokens"]
    assert table.column("num_tokens").to_pylist() == [len(w) for w in want]
    assert_tokens(pipeline.read_tokens(out, as_numpy=True), want)
    assert_errors(out)
    return table


def test_tokens_parts_equal_the_engine(tokens_reference):
    assert tokens_reference[1].num_rows == len(GOOD)


@pytest.mark.slow
def test_tokens_killed_then_resumed_gives_the_same_output(cluster, models, corpus, expected,
                                                          tokens_reference, tmp_path):
    """The CLI driver with 1 worker: the actor SIGKILLs itself mid-shard 1 (Ray restarts it and
    the shard is redone), then the driver SIGKILLs itself after its second commit; a rerun with 2
    workers resumes. (One worker makes the order certain; see test_pipeline_tasks.py.)"""
    out = tmp_path / "out"
    cluster[1].write_text("000001 mid_shard")
    pipeline.shutdown()  # this process's warm actors hold the cluster's CPUs that the CLI's actor needs
    env = {**os.environ, "PIPELINE_CRASH_AT": "mid_run:2", "RAY_ADDRESS": cluster[0]}
    killed = subprocess.run(
        [sys.executable, "jobs/embed_corpus.py", "--task", "tokens", "--model", str(models["tokens"]),
         "--input", corpus[0], "--output", str(out), "--id-column", "pid", "--passthrough", "lang",
         "--num-workers", "1", "--threads-per-worker", "1", "--max-part-bytes", str(PART_BYTES),
         "--dtype", "float32", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not cluster[1].exists(), "the actor's crash point was never reached"
    manifest = read_manifest(out)
    assert len(manifest["shards"]) == 2 and not manifest["complete"]
    resumed = pipeline.run(corpus[0], output=str(out), model=models["tokens"], task="tokens",
                           num_workers=2, passthrough_columns=("lang",), max_part_bytes=PART_BYTES,
                           **COMMON)
    assert resumed.stats.resumed_shards == 2 and resumed.stats.shards == N // ROWS_PER_PART - 2
    table = check_tokens(out, expected)
    reference = tokens_reference[1]
    assert table.column("id").equals(reference.column("id"))
    assert table.column("num_tokens").equals(reference.column("num_tokens"))
    # Same shards, same threads per worker: the redone shards give the same float16 values.
    for got, want in zip(pipeline.read_tokens(out, as_numpy=True),
                         pipeline.read_tokens(tokens_reference[0], as_numpy=True)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="read it with pipeline.read_tokens"):
        pipeline.read_sparse(out)
    with pytest.raises(InputError, match="read it with pipeline.read_tokens"):
        pipeline.read_embeddings(out)


def test_sparse_parts_equal_the_engine(cluster, models, corpus, expected, tmp_path):
    out = tmp_path / "out"
    result = pipeline.run(corpus[0], output=str(out), model=models["sparse"], task="sparse",
                          num_workers=1, shard_rows=8, **COMMON)
    assert result.manifest["fingerprint"]["engine"]["task"] == "sparse"
    assert "side" not in result.manifest["fingerprint"]
    table = pipeline.read_sparse(out)
    assert table.column_names == ["id", "indices", "values"]
    assert table.schema.field("indices").type == pa.list_(pa.int32())
    assert table.schema.field("values").type == pa.list_(pa.float32())
    assert table.column("id").to_pylist() == [f"p{i:02d}" for i in GOOD]
    assert_sparse(pipeline.read_sparse(out, as_numpy=True), expected["sparse"])
    assert_errors(out)
    with pytest.raises(InputError, match="read it with pipeline.read_sparse"):
        pipeline.read_tokens(out)


def test_bge_m3_parts_hold_three_outputs(cluster, models, corpus, expected, tmp_path):
    out = tmp_path / "out"
    pipeline.run(corpus[0], output=str(out), model=models["bge-m3"], task="bge-m3", num_workers=1,
                 allow_pickle=True, output_dtype="float32", max_part_bytes=30_000, **COMMON)
    part = pq.read_table(sorted(out.glob("part-*"))[0])
    assert part.column_names == ["id", "embedding", "indices", "values", "tokens", "num_tokens",
                                 "content_hash"]
    assert part.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert part.schema.field("tokens").type == pa.list_(pa.list_(pa.float32(), 16))  # float32 kept
    want = expected["bge-m3"]
    np.testing.assert_allclose(pipeline.read_embeddings(out, as_numpy=True), want["dense"], atol=1e-5, rtol=0)
    assert pipeline.read_embeddings(out).column_names == ["id", "embedding"]
    assert pipeline.read_sparse(out).column_names == ["id", "indices", "values"]
    assert pipeline.read_tokens(out).column_names == ["id", "tokens", "num_tokens"]
    assert_sparse(pipeline.read_sparse(out, as_numpy=True), want["sparse"])
    assert_tokens(pipeline.read_tokens(out, as_numpy=True), want["colbert"], np.float32)
    assert_errors(out)


def test_in_memory_results_fill_bad_rows(cluster, models, corpus, expected):
    table = corpus[1].drop(["lang"])
    tokens = pipeline.run(table, model=models["tokens"], task="tokens", num_workers=1, **COMMON)
    assert len(tokens.tokens) == N and all(tokens.tokens[i] is None for i in BAD)
    assert_tokens([tokens.tokens[i] for i in GOOD], expected["tokens"], np.float32)
    assert tokens.embeddings is None and tokens.sparse is None
    m3 = pipeline.run(table, model=models["bge-m3"], task="bge-m3", num_workers=1, allow_pickle=True,
                      **COMMON)
    want = expected["bge-m3"]
    assert m3.embeddings.shape == (N, 32) and np.isnan(m3.embeddings[sorted(BAD)]).all()
    np.testing.assert_allclose(m3.embeddings[GOOD], want["dense"], atol=1e-5, rtol=0)
    assert all(m3.sparse[i] is None and m3.tokens[i] is None for i in BAD)
    assert_sparse([m3.sparse[i] for i in GOOD], want["sparse"])
    assert_tokens([m3.tokens[i] for i in GOOD], want["colbert"], np.float32)
    assert {e["row"]: e["reason"] for e in m3.errors} == REASONS


def test_in_memory_token_results_are_placed_by_row():
    """How `RunResult.tokens` / `.sparse` are assembled from the shards' outputs (no Ray)."""
    from pipeline.tasks import TASKS, memory_results
    a, b = np.ones((2, 3), np.float32), np.zeros((1, 3), np.float32)
    pair = (np.array([4], np.int32), np.array([0.5], np.float32))
    got = memory_results(TASKS["tokens"], [(np.array([0, 3]), {"tokens": [a, b]})], 4, 3)
    assert got["tokens"][1] is None and got["tokens"][2] is None
    assert got["tokens"][0] is a and got["tokens"][3] is b
    got = memory_results(TASKS["sparse"], [(np.array([1]), {"sparse": [pair]})], 2, 0)
    assert got["sparse"] == [None, pair]
