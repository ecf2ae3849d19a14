"""The two execute loops: same vectors, bounded read-ahead, errors surfacing, streaming keys."""
import threading

import numpy as np
import pytest

from workers import Engine, EngineConfig
from workers.engine.execute_loop import DEPTH

TEXTS = [f"passage {i}: " + "some words about retrieval " * (i % 13 + 1) for i in range(200)]


@pytest.fixture(scope="module")
def engines():
    cfg = dict(dtype="float32", max_length=128, max_num_batched_tokens=512)
    return Engine(EngineConfig(**cfg)), Engine(EngineConfig(execute_loop="double_buffer", **cfg))


def test_both_loops_give_identical_vectors(engines):
    simple, double = engines
    a, b = simple.embed(TEXTS), double.embed(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert double.stats.batches == simple.stats.batches > 5


def test_producer_never_runs_more_than_the_depth_ahead(engines, monkeypatch):
    _, engine = engines
    counts = {"built": 0, "done": 0, "max_ahead": 0}
    build, run = engine.builder.build, engine.runner.run

    def counting_build(requests):
        counts["built"] += 1
        counts["max_ahead"] = max(counts["max_ahead"], counts["built"] - counts["done"])
        return build(requests)

    def slow_run(batch):
        out = run(batch)
        counts["done"] += 1
        return out

    monkeypatch.setattr(engine.builder, "build", counting_build)
    monkeypatch.setattr(engine.runner, "run", slow_run)
    engine.embed(TEXTS)
    assert counts["built"] > 5
    assert counts["max_ahead"] <= DEPTH


def _raise(*_, **__):
    raise RuntimeError("boom in a worker thread")


@pytest.mark.parametrize("where", ["tokenizer", "forward"])
def test_errors_in_either_thread_reach_the_caller(engines, monkeypatch, where):
    _, engine = engines
    if where == "tokenizer":
        monkeypatch.setattr(engine, "processor", _raise)
    else:
        monkeypatch.setattr(engine.runner, "run", _raise)
    result = {}

    def call():
        try:
            engine.embed(TEXTS)
        except Exception as e:  # noqa: BLE001 — the test inspects whatever arrived
            result["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "embed hung after an error"
    assert "boom in a worker thread" in str(result.get("error"))
    assert not [th for th in threading.enumerate() if th.name == "engine-input-builder"]


@pytest.mark.parametrize("loop", [0, 1])
def test_stream_keeps_keys_with_their_vectors(engines, loop):
    engine = engines[loop]
    ref = engine.embed(TEXTS)
    keys = [f"doc-{i}" for i in range(len(TEXTS))]
    got = dict(engine.embed_stream(zip(keys, TEXTS)))
    assert sorted(got) == sorted(keys)
    for i, key in enumerate(keys):
        np.testing.assert_allclose(got[key], ref[i], atol=1e-6)


def test_stream_stopped_early_leaves_no_thread(engines):
    _, engine = engines
    stream = engine.embed_stream(enumerate(TEXTS))
    first = next(stream)
    stream.close()
    assert first[1].shape == (engine.dim,)
    assert not [th for th in threading.enumerate() if th.name == "engine-input-builder"]


def test_stage_telemetry_adds_up(engines):
    simple, _ = engines
    before = simple.stats.seconds
    simple.embed(TEXTS)
    s = simple.stats
    assert s.tokenize_seconds > 0 and s.build_seconds > 0 and s.forward_seconds > 0
    assert s.forward_seconds + s.idle_seconds <= s.seconds + 1e-3
    assert s.seconds > before and 0 < s.idle_fraction < 1
