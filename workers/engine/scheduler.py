"""FIFO scheduler for prefill-only requests: pack whole requests under a token budget.

No KV cache, no preemption: a request is scheduled once, whole. A batch takes requests in order
until the next one would exceed `max_num_batched_tokens` or `max_num_seqs`; that one is put back
and opens the next batch.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass
class Request:
    index: int            # position of the text in the caller's input
    ids: np.ndarray       # (L,) int64 token ids, special tokens included
    pool_start: int = 0   # first token mean pooling counts (after a skipped instruction)
    type_ids: np.ndarray | None = None  # (L,) token type ids (text pairs); None: all 0
    flags: np.ndarray | None = None     # (L,) uint8 token flags (token_flags.py); None: all KEEP
    segments: np.ndarray | None = None  # (L,) int64 piece per token (late chunking), -1: none

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


class Scheduler:
    def __init__(self, max_num_batched_tokens: int, max_num_seqs: int):
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self._waiting: deque[Request] = deque()
        self._waiting_tokens = 0

    def add(self, requests: Iterable[Request]) -> None:
        for r in requests:
            if r.num_tokens > self.max_num_batched_tokens:
                raise ValueError(f"request {r.index} has {r.num_tokens} tokens, more than "
                                 f"max_num_batched_tokens={self.max_num_batched_tokens}")
            if r.num_tokens == 0:
                raise ValueError(f"request {r.index} has no tokens: this tokenizer adds no special "
                                 "tokens, so an empty text cannot be embedded")
            self._waiting.append(r)
            self._waiting_tokens += r.num_tokens

    def __len__(self) -> int:
        return len(self._waiting)

    def has_full_batch(self) -> bool:
        """Enough waits to fill a batch to its budget (more input would not change the next batch)."""
        return (self._waiting_tokens >= self.max_num_batched_tokens
                or len(self._waiting) >= self.max_num_seqs)

    def schedule(self) -> list[Request]:
        """Pop the next batch (empty when nothing waits)."""
        batch: list[Request] = []
        tokens = 0
        while self._waiting and len(batch) < self.max_num_seqs:
            r = self._waiting.popleft()
            if tokens + r.num_tokens > self.max_num_batched_tokens:
                self._waiting.appendleft(r)  # put back: it opens the next batch
                break
            batch.append(r)
            tokens += r.num_tokens
        self._waiting_tokens -= tokens
        return batch
