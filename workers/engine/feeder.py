"""The CPU side of the engine as one generator: texts in, packed batches out.

Pulls texts lazily in chunks (so a stream or a shard is never materialized whole), tokenizes
each chunk in one call, feeds the scheduler, and builds every batch the scheduler can fill. The
execute loop decides on which thread this generator runs.
"""
from __future__ import annotations

import itertools
import time
from typing import Iterable, Iterator

from ..inputs.chunking import WindowLedger
from ..inputs.input_processor import InputProcessor
from .input_builder import InputBuilder, PackedBatch
from .scheduler import Request, Scheduler


def feed_batches(texts: Iterable, processor: InputProcessor, scheduler: Scheduler,
                 builder: InputBuilder, stats, chunk: int,
                 ledger: WindowLedger | None = None) -> Iterator[PackedBatch]:
    """Yield packed batches for `texts` (whatever items the processor takes: texts or pairs);
    request indices count from 0 in input order.

    In chunk mode a text's windows are requests that share its index; their token counts go to
    `ledger` before any of them is scheduled, so the combiner can fold them back.
    """
    it = iter(texts)
    start = 0
    while True:
        texts_chunk = list(itertools.islice(it, chunk))
        last = len(texts_chunk) < chunk
        if texts_chunk:
            t = time.perf_counter()
            tok = processor(texts_chunk, first_index=start)
            stats.tokenize_seconds += time.perf_counter() - t
            stats.tokens += sum(len(ids) for ids in tok.ids)
            stats.truncated += tok.truncated
            stats.requests += len(texts_chunk)
            pool_starts = tok.pool_starts or [0] * len(tok.ids)
            owners = tok.owners or range(len(tok.ids))
            types = tok.type_ids or [None] * len(tok.ids)
            flags = tok.flags or [None] * len(tok.ids)
            segments = tok.segments or [None] * len(tok.ids)
            if tok.windows:
                stats.chunked += len(tok.windows)
                for offset, window_tokens in tok.windows.items():
                    ledger.register(start + offset, window_tokens)
            scheduler.add(Request(start + i, ids, first, type_ids, f, s) for i, ids, first, type_ids, f, s
                          in zip(owners, tok.ids, pool_starts, types, flags, segments))
            start += len(texts_chunk)
        # Between chunks only full batches go out; the remainder waits for the next chunk.
        while len(scheduler) and (last or scheduler.has_full_batch()):
            t = time.perf_counter()
            batch = builder.build(scheduler.schedule())
            stats.copy_in_seconds += batch.copy_in_seconds
            stats.build_seconds += time.perf_counter() - t - batch.copy_in_seconds
            yield batch
        if last:
            return
