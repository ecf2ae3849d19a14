"""`pipeline.run(task="score" | "classify")` end to end on one local Ray (2 CPUs) with tiny
random-weight folders (tests/tiny_models.py).

The reference for every score and logit is the engine in this process (`Engine.score`,
`Engine.classify`, float32), which tests/workers/test_score.py and tests/workers/test_classify.py check against
sentence-transformers' CrossEncoder and transformers. The kill points are the test-only hooks
`PIPELINE_CRASH_FILE` (an actor SIGKILLs itself) and `PIPELINE_CRASH_AT` (the CLI driver
SIGKILLs itself), as in tests/pipeline/test_pipeline_crash.py.
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
from pipeline.errors import FingerprintMismatch, InputError
from pipeline.inputs.samples import sample_passages
from tiny_models import make_tiny_classifier
from pipeline.output.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
N, SHARD_ROWS = 60, 10
# row -> (query, passage): a null or empty/whitespace text on either side is a bad row
BAD = {5: (None, "p"), 17: ("q", ""), 30: ("  ", None), 44: ("q", "\t\n")}
REASONS = {5: "text column 'query' is null", 17: "text column 'passage' is empty",
           30: "text column 'query' is whitespace only; text column 'passage' is null",
           44: "text column 'passage' is whitespace only"}
GOOD = [i for i in range(N) if i not in BAD]
SCORE = {"task": "score", "text_column": "query", "pair_column": "passage", "id_column": "pid",
         "shard_rows": SHARD_ROWS, "dtype": "float32", "progress": False}
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_classifier(root / "ce", "BertForSequenceClassification")
    make_tiny_classifier(root / "cls", "BertForSequenceClassification", num_labels=3, labels=LABELS)
    return root / "ce", root / "cls"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A Parquet corpus of (pid, query, passage, lang) in two files, with bad pairs."""
    passages = sample_passages(N, seed=21, max_chars=240)
    queries = [p.split(".")[0][:80] for p in passages]
    queries = queries[1:] + queries[:1]  # half relevant, half not: scores spread
    queries[::2] = [p.split(".")[0][:80] for p in passages[::2]]
    for row, (q, p) in BAD.items():
        queries[row], passages[row] = q, p
    table = pa.table({"pid": [f"r{i:03d}" for i in range(N)], "query": queries,
                      "passage": passages, "lang": ["en"] * N})
    folder = tmp_path_factory.mktemp("pairs")
    pq.write_table(table.slice(0, 35), folder / "a.parquet", row_group_size=8)
    pq.write_table(table.slice(35), folder / "b.parquet", row_group_size=8)
    return str(folder), table


@pytest.fixture(scope="module")
def engine_scores(folders, pairs):
    from workers import Engine, EngineConfig
    engine = Engine(EngineConfig(model=str(folders[0]), task="score", dtype="float32"))
    table = pairs[1]
    q, p = table.column("query").to_pylist(), table.column("passage").to_pylist()
    return engine.score([(q[i], p[i]) for i in GOOD])


# -- refused before Ray starts --------------------------------------------------------------------

def test_missing_pair_column_is_refused_before_ray_starts(folders, pairs):
    was_up = ray.is_initialized()
    for data in (pairs[0], pairs[1].drop(["passage"])):  # a Parquet folder, an in-memory table
        with pytest.raises(InputError) as e:
            pipeline.run(data, output=None if isinstance(data, pa.Table) else "unused",
                         model=folders[0], **{**SCORE, "pair_column": "text"})
        assert "column 'text' not found" in str(e.value) and "'query'" in str(e.value), e.value
        assert "pair_column=" in str(e.value)
    assert ray.is_initialized() == was_up


@pytest.mark.parametrize("options,message", [
    ({"task": "score"}, "pass pair_column="),
    ({"task": "score", "pair_column": "passage", "model": None},
     "SentenceTransformer folder, which serves task 'embed'"),
    ({"task": "embed", "pair_column": "passage"}, "pair_column='passage' is for task='score'"),
    ({"task": "classify", "pair_column": "passage"}, "is for task='score'"),
    ({"task": "score", "pair_column": "passage", "output_dtype": "int8"}, "task='embed' only"),
    ({"task": "classify", "output_dtype": "float16"}, "task='embed' only"),
    ({"task": "score", "pair_column": "passage", "truncation": "chunk"}, "truncation='chunk' embeds windows"),
])
def test_task_options_are_refused(folders, pairs, options, message):
    was_up = ray.is_initialized()
    options = {"model": folders[0], "text_column": "query", "progress": False, **options}
    # The engine's own options are checked by workers.EngineConfig (a plain ValueError).
    error = ValueError if "truncation" in options else InputError
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        pipeline.run(pairs[1], **options)
    assert ray.is_initialized() == was_up


# -- end to end -----------------------------------------------------------------------------------

def check_scores(out: Path, pairs, engine_scores):
    table = pipeline.read_scores(out)
    assert table.column_names == ["id", "score", "lang"]
    assert table.schema.field("score").type == pa.float32()
    assert table.column("id").to_pylist() == [f"r{i:03d}" for i in GOOD]  # every good row once, in order
    np.testing.assert_allclose(pipeline.read_scores(out, as_numpy=True), engine_scores, atol=1e-5, rtol=0)
    errors = pq.read_table(out / "_errors.parquet").to_pylist()
    assert {e["row"]: e["reason"] for e in errors} == REASONS
    assert [e["id"] for e in errors] == [f"r{i:03d}" for i in sorted(BAD)]
    return table


@pytest.fixture(scope="module")
def reference(cluster, folders, pairs, engine_scores, tmp_path_factory):
    """The uninterrupted 2-worker score run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = pipeline.run(pairs[0], output=str(out), model=folders[0], num_workers=2,
                          passthrough_columns=("lang",), **SCORE)
    assert result.stats.rows == len(GOOD) and result.stats.bad_rows_total == len(BAD)
    assert result.stats.shards == N // SHARD_ROWS and len(result.stats.workers) == 2
    fingerprint = result.manifest["fingerprint"]
    assert fingerprint["engine"]["task"] == "score" and fingerprint["pair_column"] == "passage"
    assert fingerprint["engine"]["activation"] == "sigmoid"
    return check_scores(out, pairs, engine_scores)


def test_score_two_workers_equal_the_engine(reference):
    assert reference.num_rows == len(GOOD)


@pytest.mark.slow
def test_score_killed_then_resumed_gives_the_same_scores(cluster, folders, pairs, engine_scores,
                                                         reference, tmp_path):
    """The CLI driver with 1 worker: the actor SIGKILLs itself mid-shard 1 (Ray restarts it and the
    shard is redone), then the driver SIGKILLs itself after its third commit; a rerun with 2
    workers resumes. One worker makes the order certain: with two, the other could commit three
    shards before the armed one starts (seen in CI), and the actor kill would never happen."""
    out = tmp_path / "out"
    cluster[1].write_text("000001 mid_shard")
    pipeline.shutdown()  # this process's warm actors hold the cluster's CPUs that the CLI's actor needs
    env = {**os.environ, "PIPELINE_CRASH_AT": "mid_run:3", "RAY_ADDRESS": cluster[0]}
    killed = subprocess.run(
        [sys.executable, "jobs/embed_corpus.py", "--task", "score", "--model", str(folders[0]),
         "--input", pairs[0], "--output", str(out), "--text-column", "query", "--pair-column",
         "passage", "--id-column", "pid", "--passthrough", "lang", "--num-workers", "1",
         "--shard-rows", str(SHARD_ROWS), "--dtype", "float32", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not cluster[1].exists(), "the actor's crash point was never reached"
    manifest = read_manifest(out)
    assert len(manifest["shards"]) == 3 and not manifest["complete"]
    resumed = pipeline.run(pairs[0], output=str(out), model=folders[0], num_workers=2,
                           passthrough_columns=("lang",), **SCORE)
    assert resumed.stats.resumed_shards == 3 and resumed.stats.shards == N // SHARD_ROWS - 3
    table = check_scores(out, pairs, engine_scores)
    assert table.column("id").equals(reference.column("id"))
    np.testing.assert_allclose(table.column("score").to_numpy(), reference.column("score").to_numpy(),
                               atol=1e-6, rtol=0)  # threads per worker may differ: rounding only
    # Another pairing of the same columns is another run: refused before any actor starts.
    with pytest.raises(FingerprintMismatch, match="pair_column: 'passage' in the output, 'query'"):
        pipeline.run(pairs[0], output=str(out), model=folders[0], **{
            **SCORE, "text_column": "passage", "pair_column": "query"})
    with pytest.raises(InputError, match="read it with pipeline.read_scores"):
        pipeline.read_embeddings(out)


def test_score_in_memory(cluster, folders, pairs, engine_scores):
    result = pipeline.run(pairs[1], model=folders[0], num_workers=1, **SCORE)
    assert result.scores.shape == (N,) and result.scores.dtype == np.float32
    assert np.isnan(result.scores[sorted(BAD)]).all()
    np.testing.assert_allclose(result.scores[GOOD], engine_scores, atol=1e-5, rtol=0)
    assert result.embeddings is None and result.logits is None
    assert {e["row"]: e["reason"] for e in result.errors} == REASONS


def test_classify_parts_equal_the_engine(cluster, folders, pairs, tmp_path):
    from workers import Engine, EngineConfig
    texts = pairs[1].column("passage").to_pylist()
    good = [i for i, t in enumerate(texts) if t and t.strip()]
    engine = Engine(EngineConfig(model=str(folders[1]), task="classify", dtype="float32",
                                 activation="softmax"))
    want = engine.classify([texts[i] for i in good])
    want_labels = [LABELS[j] for j in want.argmax(1)]
    assert len(set(want_labels)) > 1  # the labels really differ, so the comparison can fail
    options = {"task": "classify", "text_column": "passage", "activation": "softmax",
               "dtype": "float32", "progress": False, "shard_rows": 25, "num_workers": 1}
    result = pipeline.run(pairs[0], output=str(tmp_path / "out"), model=folders[1], id_column="pid",
                          **options)
    assert result.manifest["fingerprint"]["engine"]["task"] == "classify"
    table = pipeline.read_scores(tmp_path / "out")
    assert table.column_names == ["id", "logits", "label"]
    assert table.schema.field("logits").type == pa.list_(pa.float32(), 3)
    assert table.column("id").to_pylist() == [f"r{i:03d}" for i in good]
    np.testing.assert_allclose(pipeline.read_scores(tmp_path / "out", as_numpy=True), want, atol=1e-5)
    assert table.column("label").to_pylist() == want_labels


def test_in_memory_classify_results_fill_bad_rows():
    """How `RunResult.logits` / `.labels` are assembled from the shards' outputs (no Ray)."""
    from pipeline.tasks import TASKS, memory_results
    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    parts = [(np.array([0, 2]), {"logits": logits[:2], "label": np.array(["b", "b"], object)}),
             (np.array([4]), {"logits": logits[2:], "label": np.array(["a"], object)})]
    got = memory_results(TASKS["classify"], parts, 5, 2)
    assert got["labels"] == ["b", None, "b", None, "a"]
    np.testing.assert_array_equal(got["logits"][[0, 2, 4]], logits)
    assert np.isnan(got["logits"][[1, 3]]).all() and got["logits"].dtype == np.float32
