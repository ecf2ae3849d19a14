"""Small in-memory inputs run in the driver's process (issue 16 item 4, `pipeline/execution/local.py`).

No Ray fixture here: these tests need a process where no Ray runs, as in a fresh notebook. Each
result is compared with the engine alone (float32, the bundled MiniLM), and the last test checks
that an input over `in_process_rows` still starts a local Ray (and stops it at shutdown).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import ray

import pipeline
from pipeline.execution import cluster, warm
from pipeline.execution.actor import EmbedWorker
from pipeline.inputs.samples import sample_passages

N = 30
RUN = {"dtype": "float32", "shard_rows": 8, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def no_ray(tmp_path_factory):
    """No Ray in this process and none configured: no RAY_ADDRESS, no `ray start` cluster file."""
    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setattr(cluster, "address_file", lambda: str(tmp_path_factory.mktemp("ray") / "none"))
        yield
    pipeline.shutdown()


@pytest.fixture(scope="module")
def texts():
    return sample_passages(N, seed=11, max_chars=160)


@pytest.fixture(scope="module")
def engine_vectors(texts):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(dtype="float32")).embed(texts)


def local_engine():
    return warm._state.local.worker if warm._state.local is not None else None


def test_a_small_list_runs_here_without_ray_and_matches_the_engine(texts, engine_vectors):
    bad = [*texts[:5], None, "   ", *texts[5:]]  # two bad rows, reported not lost
    result = pipeline.run(bad, **RUN)
    assert not ray.is_initialized()
    assert result.stats.rows == N and result.stats.bad_rows == 2 and result.stats.shards == 4
    assert [e["row"] for e in result.errors] == [5, 6]
    assert "is null" in result.errors[0]["reason"] and "whitespace" in result.errors[1]["reason"]
    good = np.delete(result.embeddings, [5, 6], axis=0)
    np.testing.assert_allclose(good, engine_vectors, atol=1e-5, rtol=0)
    assert np.isnan(result.embeddings[[5, 6]]).all()


def test_a_resume_with_other_model_settings_is_refused_before_an_engine_starts(texts, tmp_path):
    """The engine's fields that the model folder and options decide (here max_length) are
    compared with the output's before any engine or Ray starts: the warm engine is untouched."""
    out = tmp_path / "out"
    pipeline.run(texts, output=str(out), **RUN)
    first = local_engine()
    with pytest.raises(pipeline.FingerprintMismatch) as refused:
        pipeline.run(texts, output=str(out), **RUN, max_length=64)
    assert "engine.max_length: 256 in the output, 64 in this run" in str(refused.value)
    assert "--overwrite" in str(refused.value)
    assert local_engine() is first and not ray.is_initialized()  # nothing was started for it
    assert pipeline.run(texts, output=str(out), **RUN).stats.resumed_shards == -(-N // RUN["shard_rows"])


def test_a_later_call_reuses_the_engine_and_other_settings_replace_it(texts, engine_vectors):
    pipeline.run(texts, **RUN)
    first = local_engine()
    table = pa.table({"passage": texts, "key": [f"p{i}" for i in range(N)]})
    again = pipeline.run(table, text_column="passage", id_column="key", **RUN)
    assert local_engine() is first  # no second model load
    np.testing.assert_allclose(again.embeddings, engine_vectors, atol=1e-5, rtol=0)
    short = pipeline.run(texts, **RUN, max_length=16)
    assert local_engine() is not first
    assert not np.allclose(short.embeddings, engine_vectors, atol=1e-3)
    pipeline.run(texts, **RUN, max_length=16, keep_warm=False)
    assert local_engine() is None
    pipeline.run(texts, **RUN)
    pipeline.shutdown()
    assert local_engine() is None and not ray.is_initialized()


def test_an_output_folder_written_here_is_complete_and_resumable(texts, engine_vectors, tmp_path):
    out = tmp_path / "out"
    pipeline.run(texts, output=str(out), **RUN, output_dtype="int8")  # calibrated in this process
    stored = pipeline.read_embeddings(str(out), dequantize=True, as_numpy=True)
    cosine = (stored * engine_vectors).sum(1) / np.linalg.norm(stored, axis=1)
    assert cosine.min() > 0.99
    resumed = pipeline.run(texts, output=str(out), **RUN, output_dtype="int8")
    assert resumed.stats.resumed_shards == 4 and resumed.stats.rows == 0
    assert not ray.is_initialized()


@pytest.mark.parametrize("damage", ["cut short", "emptied", "not a manifest", "no fingerprint"])
def test_a_damaged_manifest_is_refused_naming_it_and_overwrite_starts_again(texts, engine_vectors,
                                                                           tmp_path, damage):
    """A `_manifest.json` that is not one (cut short by a machine crash, emptied, edited) raised
    a bare JSONDecodeError naming nothing; now the run, and a reader, refuse it naming the file
    and the two ways on."""
    out = tmp_path / "out"
    pipeline.run(texts, output=str(out), **RUN)
    path = out / "_manifest.json"
    body = path.read_text()
    damaged, problem = {"cut short": (body[:len(body) // 2], "is not valid JSON"),
                        "emptied": ("", "is empty"),
                        "not a manifest": ("[1, 2]", "holds a JSON list, not a manifest"),
                        "no fingerprint": (json.dumps({"version": 2}), "has no fingerprint")}[damage]
    path.write_text(damaged)
    expected = rf"{path} {problem}.*overwrite=True \(--overwrite\)"
    with pytest.raises(pipeline.InputError, match=expected):
        pipeline.run(texts, output=str(out), **RUN)
    with pytest.raises(pipeline.InputError, match=expected):
        pipeline.read_embeddings(out)
    again = pipeline.run(texts, output=str(out), **RUN, overwrite=True)
    assert again.stats.resumed_shards == 0 and again.stats.rows == N
    np.testing.assert_allclose(pipeline.read_embeddings(out, as_numpy=True), engine_vectors, atol=1e-5, rtol=0)


def test_a_failing_shard_is_retried_in_place_then_named(texts, engine_vectors, monkeypatch):
    calls = {"n": 0}
    process = EmbedWorker.process

    def fails_once(self, run_box, shard):  # fault injection: the first call raises
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return process(self, run_box, shard)

    monkeypatch.setattr(EmbedWorker, "process", fails_once)
    result = pipeline.run(texts, **RUN)
    assert result.stats.retries == 1
    np.testing.assert_allclose(result.embeddings, engine_vectors, atol=1e-5, rtol=0)

    def always_fails(self, run_box, shard):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(EmbedWorker, "process", always_fails)
    with pytest.raises(pipeline.ShardFailedError, match=r"rows 0\.\.7.*failed 3 times.*injected failure"):
        pipeline.run(texts, **RUN)
    assert local_engine() is None  # a failed run does not keep its engine


def test_a_notebook_call_prints_one_line_unless_asked(texts, capfd):
    """Issue 24: every in-memory call printed a 12-line summary table. By default one line
    (rows, time, the bad rows that come back as NaN); progress=True the bar and the table;
    progress=False nothing."""
    quiet = {k: v for k, v in RUN.items() if k != "progress"}
    capfd.readouterr()
    result = pipeline.run([*texts[:3], None], **quiet)
    out, err = capfd.readouterr()
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedded 3 rows in "), lines
    assert "1 bad row(s) not embedded (NaN / None rows in the result" in lines[0]
    assert np.isnan(result.embeddings[3]).all() and result.errors[0]["row"] == 3
    pipeline.run(texts[:3], **quiet, progress=True)
    out, err = capfd.readouterr()
    assert "rows embedded" in out and "throughput" in out and "3/3 rows" in err
    pipeline.run(texts[:3], **quiet, progress=False)
    assert capfd.readouterr() == ("", "")


def test_ray_is_used_over_the_row_limit_or_when_asked(texts, engine_vectors):
    result = pipeline.run(texts, **RUN, in_process_rows=N - 1, num_workers=1)
    assert ray.is_initialized()  # started by the pipeline for this run, kept with its warm actor
    assert warm.warm_pool() is not None and local_engine() is None
    np.testing.assert_allclose(result.embeddings, engine_vectors, atol=1e-5, rtol=0)
    pipeline.shutdown()
    assert not ray.is_initialized()


_NOTEBOOK_CELL = """
import pipeline
result = pipeline.run(["a passage", "", "another"], in_process_rows=0)  # through a new local Ray
assert result.embeddings.shape == (3, 384)
"""


@pytest.mark.slow
def test_a_notebook_call_that_starts_ray_still_prints_one_line():
    """Issue 24: the first call that starts a local Ray also printed Ray's INFO line and its
    token-authentication warning. A fresh process (as a new notebook), no Ray configured."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    import shutil
    import tempfile
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env["RAY_TMPDIR"] = ray_tmp  # and no `ray start` cluster file from elsewhere is found
    try:
        done = subprocess.run([sys.executable, "-c", _NOTEBOOK_CELL], env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedded 2 rows in "), lines


def test_what_runs_in_process():
    from pipeline.config import PipelineConfig
    from pipeline.execution.driver import _runs_in_process
    small, config = ["a"] * 5, PipelineConfig()
    assert _runs_in_process(small, config, {})
    assert not _runs_in_process(small, config, {"model": "s3://bucket/models/minilm"})  # node caches: Ray
    assert not _runs_in_process(small, PipelineConfig(in_process_rows=4), {})
    assert not _runs_in_process(small, PipelineConfig(in_process_rows=0), {})
    assert not _runs_in_process(small, PipelineConfig(num_workers=2), {})
    assert not _runs_in_process(small, PipelineConfig(address="local"), {})
    assert not _runs_in_process("corpus/*.parquet", config, {})
    assert not _runs_in_process(iter(small), config, {})  # no length: not known to be small
