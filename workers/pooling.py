"""Poolers over packed hidden states, then normalization and Matryoshka truncation.

A pooler maps (T, H) hidden states plus the batch layout to (B, H) float32 vectors. Mean pooling
sums per sequence in float32 (index_add over segment ids), never padding; when the batch carries
per-sequence pool starts (a skipped instruction), only tokens from there on are averaged.
`DensePooler` adds a sentence-transformers folder's Dense modules between pooling and the
truncation/normalization (EmbeddingGemma: mean -> 2_Dense -> 3_Dense -> Normalize).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

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


# sentence-transformers Dense `activation_function` (a class path) -> the function
DENSE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.activation.ReLU": F.relu,
    "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
}


class Dense(nn.Module):
    """One sentence-transformers Dense module: act(linear(x)), (B, in) -> (B, out)."""

    def __init__(self, spec: dict):
        super().__init__()
        if spec["activation"] not in DENSE_ACTIVATIONS:
            raise ValueError(f"Dense module {spec['path']!r} uses activation {spec['activation']!r}, "
                             f"which is not supported; supported: {sorted(DENSE_ACTIVATIONS)}")
        self.linear = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
        self.act = DENSE_ACTIVATIONS[spec["activation"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x.to(self.linear.weight.dtype)))


class DensePooler(nn.Module):
    """Pool, then the folder's Dense modules in order (in the model dtype), then truncate and
    normalize as `Pooler`. Parameters are named `<module folder>.linear.*` (e.g.
    `2_Dense.linear.weight`), as the loader names the tensors of a module subfolder."""

    def __init__(self, pooling: str, normalize: bool, dimensions: int | None,
                 dense: tuple[dict, ...], hidden_size: int):
        super().__init__()
        self.pooler = Pooler(pooling, normalize=False, dimensions=None)
        self.normalize, self.dimensions = normalize, dimensions
        if dense[-1]["out_features"] != hidden_size:
            raise ValueError(f"the last Dense module ({dense[-1]['path']}) outputs "
                             f"{dense[-1]['out_features']} features, but this engine's vectors are "
                             f"hidden_size={hidden_size} wide; only Dense stacks that return to the "
                             "hidden size (as EmbeddingGemma's) are supported")
        self.names = [spec["path"].replace(".", "_") for spec in dense]
        for name, spec in zip(self.names, dense):
            self.add_module(name, Dense(spec))

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        out = self.pooler(hidden, batch)                     # (B, H) float32
        for name in self.names:
            out = getattr(self, name)(out)                   # (B, out_features)
        out = out.float()
        if self.dimensions is not None:
            out = out[:, : self.dimensions]
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out
