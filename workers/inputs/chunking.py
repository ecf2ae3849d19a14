"""Chunk mode, device side: fold the vectors of a text's windows back into one vector.

The input processor splits a text over max_length into overlapping windows (see
`input_processor.py`); each window is scheduled as its own request under the text's index, and
the feeder registers how many content tokens each window holds. Windows of one text reach the
combiner in order (the scheduler is FIFO and both execute loops keep batch order), possibly
across batches. The text's vector is the token-weighted mean of its windows' vectors (each
already pooled, cut to `dimensions` and normalized as any vector is), normalized again when the
engine normalizes.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np


class WindowLedger:
    """Texts split into windows that are not yet complete: index -> window token counts left."""

    def __init__(self):
        self._pending: dict[int, deque[int]] = {}

    def register(self, index: int, window_tokens: list[int]) -> None:
        self._pending[index] = deque(window_tokens)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def next_weight(self, index: int) -> tuple[int, bool] | None:
        """(content tokens of this window, whether it was the text's last); None: not chunked."""
        left = self._pending.get(index)
        if left is None:
            return None
        weight = left.popleft()
        if not left:
            del self._pending[index]
        return weight, not left


def combine_windows(results: Iterator[tuple[np.ndarray, np.ndarray]], ledger: WindowLedger,
                    normalize: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pass (indices, vectors) through; rows that are windows are held until their text is whole."""
    sums: dict[int, tuple[np.ndarray, int]] = {}
    for indices, vectors in results:
        if not ledger and not sums:
            yield indices, vectors
            continue
        keep, done_idx, done_vec = [], [], []
        for row, index in enumerate(indices.tolist()):
            step = ledger.next_weight(index)
            if step is None:
                keep.append(row)
                continue
            weight, last = step
            total, tokens = sums.get(index, (0.0, 0))
            total = total + vectors[row].astype(np.float64) * weight
            if not last:
                sums[index] = (total, tokens + weight)
                continue
            sums.pop(index, None)
            vector = total / max(tokens + weight, 1)
            if normalize:
                vector = vector / max(np.linalg.norm(vector), 1e-12)
            done_idx.append(index)
            done_vec.append(vector.astype(np.float32))
        if len(keep) == len(indices):
            yield indices, vectors
        else:
            if keep:
                yield indices[keep], vectors[keep]
            if done_idx:
                yield np.asarray(done_idx, dtype=np.int64), np.stack(done_vec)
