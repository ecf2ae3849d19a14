"""The feeder: texts pulled lazily a chunk at a time, every text in exactly one batch, in order,
each batch within its budget, and between chunks only full batches leave."""
import itertools

import numpy as np

from workers import Engine, EngineConfig
from workers.engine.engine import EngineStats
from workers.engine.feeder import feed_batches

TEXTS = [f"text {i} " + "word " * (i % 17) for i in range(60)]


def _engine():
    return Engine(EngineConfig(dtype="float32", max_length=64, max_num_batched_tokens=128, max_num_seqs=8))


def _feed(engine, texts, chunk):
    r = engine.resolved
    scheduler = engine.workflow.scheduler(r.max_num_batched_tokens, r.max_num_seqs)
    stats = EngineStats()
    return feed_batches(texts, engine.processor, scheduler, engine.builder, stats, chunk), stats


def test_every_text_once_in_order_within_budget():
    engine = _engine()
    batches, stats = _feed(engine, TEXTS, chunk=16)
    seen = []
    for batch in batches:
        assert len(batch.indices) <= 8 and int(batch.seqlens.sum()) <= 128
        seen.extend(batch.indices.tolist())
    assert seen == list(range(len(TEXTS)))
    lengths = [len(ids) for ids in engine.processor(TEXTS).ids]
    assert (stats.requests, stats.tokens) == (len(TEXTS), sum(lengths))


def test_input_is_pulled_a_chunk_at_a_time():
    engine = _engine()
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield f"endless text {i}"

    batches, _ = _feed(engine, source(), chunk=16)
    first = next(batches)
    assert len(pulled) <= 17  # one chunk (and the look-ahead that ends it), not the whole stream
    assert first.indices[0] == 0


def test_chunk_size_does_not_change_the_batches_contents():
    engine = _engine()
    by_chunk = {}
    for chunk in (7, 64):
        batches, _ = _feed(engine, TEXTS, chunk)
        by_chunk[chunk] = np.concatenate([b.input_ids.numpy() for b in batches])
    np.testing.assert_array_equal(by_chunk[7], by_chunk[64])
