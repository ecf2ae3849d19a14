"""An engine actor runs every engine call on one thread (pipeline/execution/actor.py).

Ray calls an actor's methods from DEPTH threads; OpenMP keeps a thread team per calling thread,
and with more OpenMP threads alive than cores libgomp sleeps at barriers instead of spinning (a
20-35% slower forward, docs/BENCHMARKS.md). The test drives `EmbedWorker.process` from two
threads at once, as Ray does, and records the thread of every model forward with a torch
forward pre-hook; the vectors must be the engine's own. No Ray is needed for this: the worker
class is the same one Ray wraps.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.execution.actor import EmbedWorker, RunContext
from pipeline.config import PipelineConfig
from pipeline.inputs.samples import sample_passages
from pipeline.inputs.shards import plan_shards
from pipeline.inputs.sources import open_source
from workers import Engine, EngineConfig


def test_two_calling_threads_one_engine_thread():
    texts = sample_passages(24, seed=2, max_chars=120)
    config = PipelineConfig(progress=False)
    source = open_source(texts, config)
    shards = plan_shards(source.fragments, 6)
    worker = EmbedWorker(EngineConfig(dtype="float32"), None)
    seen = []
    worker.engine.model.register_forward_pre_hook(lambda *_: seen.append(threading.current_thread().name))
    box = [RunContext(config, None, source)]
    with ThreadPoolExecutor(2, thread_name_prefix="ray-like") as pool:
        records = list(pool.map(lambda s: worker.process(box, s), shards))
    callers = set(seen)
    assert len(seen) >= len(shards) and len(callers) == 1 and callers.pop().startswith("engine")
    vectors = np.concatenate([r["outputs"]["embedding"] for r in records])
    np.testing.assert_allclose(vectors, Engine(EngineConfig(dtype="float32")).embed(texts), atol=1e-5, rtol=0)


def test_inline_worker_runs_on_the_callers_thread():
    worker = EmbedWorker(EngineConfig(dtype="float32"), None, inline=True)
    seen = []
    worker.engine.model.register_forward_pre_hook(lambda *_: seen.append(threading.current_thread().name))
    worker.engine.embed(["one passage"])
    assert seen == [threading.current_thread().name]


def test_each_shards_counts_are_its_own_while_the_next_shard_runs(monkeypatch):
    """The two calls Ray runs at once share one engine's cumulative counters; a shard's share is
    taken while it holds the engine. Taken after it let go, the next shard's tokenizing leaked
    into it (seen as a run counting 8,031 tokens for 6,335). The moment after the engine is let
    go is widened here (the test-only crash hook sleeps) so that the next shard runs in it."""
    import time

    import pipeline.execution.actor as actor
    texts = sample_passages(24, seed=3, max_chars=300)
    config = PipelineConfig(progress=False)
    source = open_source(texts, config)
    shards = plan_shards(source.fragments, 12)
    worker = EmbedWorker(EngineConfig(dtype="float32", max_length=32, truncation="chunk"), None)
    monkeypatch.setattr(actor, "_crash_point", lambda *_: time.sleep(0.5))
    box = [RunContext(config, None, source)]
    with ThreadPoolExecutor(2, thread_name_prefix="ray-like") as pool:
        records = list(pool.map(lambda s: worker.process(box, s), shards))
    reference = Engine(EngineConfig(dtype="float32", max_length=32, truncation="chunk"))
    for shard, record in zip(shards, records):
        before = (reference.stats.tokens, reference.stats.chunked)
        reference.embed(texts[shard.row_offset:shard.row_offset + shard.num_rows])
        assert (record["tokens"], record["chunked"]) == (reference.stats.tokens - before[0],
                                                         reference.stats.chunked - before[1])
