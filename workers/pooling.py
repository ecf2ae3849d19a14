"""Poolers over packed hidden states, then normalization and Matryoshka truncation.

A pooler maps (T, H) hidden states plus the batch layout to (B, H) float32 vectors. Mean pooling
sums per sequence in float32 (index_add over segment ids), never padding; when the batch carries
per-sequence pool starts (a skipped instruction), only tokens from there on are averaged.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .input_builder import PackedBatch


def cls_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return hidden.index_select(0, batch.attn.cu_seqlens[:-1].long()).float()


def last_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return hidden.index_select(0, batch.attn.cu_seqlens[1:].long() - 1).float()


def mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    B = batch.seqlens.shape[0]
    sums = torch.zeros(B, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    if batch.pool_starts is None:
        sums.index_add_(0, batch.seq_ids, hidden.float())
        return sums / batch.seqlens[:, None].float()
    # Skip each sequence's instruction: only positions >= its pool start count.
    rows = (batch.positions >= batch.pool_starts[batch.seq_ids]).nonzero().squeeze(1)  # (T',)
    sums.index_add_(0, batch.seq_ids[rows], hidden[rows].float())
    return sums / (batch.seqlens - batch.pool_starts)[:, None].float()


POOLERS: dict[str, Callable[[torch.Tensor, PackedBatch], torch.Tensor]] = {
    "cls": cls_pool, "mean": mean_pool, "last": last_pool,
}


class Pooler:
    """Pool, truncate to `dimensions` (Matryoshka), then L2-normalize if asked."""

    def __init__(self, pooling: str, normalize: bool, dimensions: int | None):
        if pooling not in POOLERS:
            raise ValueError(f"pooling {pooling!r} is not supported; choose one of {sorted(POOLERS)}")
        self.pool = POOLERS[pooling]
        self.normalize = normalize
        self.dimensions = dimensions

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        out = self.pool(hidden, batch)                       # (B, H) float32
        if self.dimensions is not None:
            out = out[:, : self.dimensions]
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        return out
