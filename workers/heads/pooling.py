"""Poolers over packed hidden states, then a folder's Dense/Normalize modules and truncation.

A pooler maps (T, H) hidden states plus the batch layout to (B, H) float32 vectors, never
padding: sums per sequence in float32 (index_add over segment ids), maxima by scatter_reduce.
The modes are sentence-transformers' (cls, mean, max, mean_sqrt_len_tokens, weightedmean,
lasttoken = "last"); "a+b" concatenates. When the batch carries per-sequence pool starts (a
skipped prompt: `include_prompt: false`), only tokens from there on are pooled, cls reads the
first of them, and weightedmean keeps their original position weights, as the library does.
`DensePooler` then runs the folder's post-pooling modules in modules.json order (Dense layers,
Normalize), truncates to `dimensions` (Matryoshka) and normalizes when asked.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.input_builder import PackedBatch


def cls_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    first = batch.attn.cu_seqlens[:-1].long()
    if batch.pool_starts is not None:
        first = first + batch.pool_starts
    return hidden.index_select(0, first).float()


def last_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return hidden.index_select(0, batch.attn.cu_seqlens[1:].long() - 1).float()


def _pooled(hidden: torch.Tensor, batch: PackedBatch):
    """(float32 states of the pooled tokens (T', H), their sequence ids (T',), their positions)."""
    if batch.pool_starts is None:
        return hidden.float(), batch.seq_ids, batch.positions
    rows = (batch.positions >= batch.pool_starts[batch.seq_ids]).nonzero().squeeze(1)  # (T',)
    return hidden[rows].float(), batch.seq_ids[rows], batch.positions[rows]


def _segment_sum(values: torch.Tensor, seq: torch.Tensor, B: int) -> torch.Tensor:
    out = torch.zeros(B, values.shape[1], dtype=torch.float32, device=values.device)
    return out.index_add_(0, seq, values)                                   # (B, H)


def _counts(batch: PackedBatch) -> torch.Tensor:
    n = batch.seqlens if batch.pool_starts is None else batch.seqlens - batch.pool_starts
    return n[:, None].float()                                               # (B, 1)


def mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    h, seq, _ = _pooled(hidden, batch)
    return _segment_sum(h, seq, batch.seqlens.shape[0]) / _counts(batch)


def mean_sqrt_len_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    h, seq, _ = _pooled(hidden, batch)
    return _segment_sum(h, seq, batch.seqlens.shape[0]) / _counts(batch).sqrt()


def weighted_mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Token i of a sequence weighs i + 1 (its position, prompt tokens counted but not pooled)."""
    h, seq, pos = _pooled(hidden, batch)
    w = (pos + 1).float()[:, None]                                          # (T', 1)
    B = batch.seqlens.shape[0]
    return _segment_sum(h * w, seq, B) / _segment_sum(w, seq, B)


def max_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    h, seq, _ = _pooled(hidden, batch)
    out = torch.full((batch.seqlens.shape[0], h.shape[1]), float("-inf"), device=h.device)
    return out.scatter_reduce_(0, seq[:, None].expand_as(h), h, "amax")      # (B, H)


POOLERS: dict[str, Callable[[torch.Tensor, PackedBatch], torch.Tensor]] = {
    "cls": cls_pool, "mean": mean_pool, "last": last_pool, "max": max_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool, "weightedmean": weighted_mean_pool,
}


class Pooler:
    """Pool (modes joined by "+" are concatenated), truncate to `dimensions` (Matryoshka), then
    L2-normalize if asked."""

    def __init__(self, pooling: str, normalize: bool, dimensions: int | None):
        modes = pooling.split("+")
        for mode in modes:
            if mode not in POOLERS:
                raise ValueError(f"pooling {mode!r} is not supported; choose one of {sorted(POOLERS)}")
        self.pools = [POOLERS[mode] for mode in modes]
        self.normalize = normalize
        self.dimensions = dimensions

    def pool(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        if len(self.pools) == 1:
            return self.pools[0](hidden, batch)              # (B, H) float32
        return torch.cat([pool(hidden, batch) for pool in self.pools], dim=1)   # (B, k*H)

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.post(self.pool(hidden, batch))           # (B, H) float32

    def post(self, out: torch.Tensor) -> torch.Tensor:
        """What follows pooling: truncate to `dimensions`, normalize if asked. (B, H) -> (B, width)."""
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
    "torch.nn.modules.activation.SiLU": F.silu,
}


class Dense(nn.Module):
    """One sentence-transformers Dense module: act(linear(x)) [+ x, or + residual(x) when the
    widths differ, with use_residual], (B, in) -> (B, out)."""

    def __init__(self, spec: dict):
        super().__init__()
        if spec["activation"] not in DENSE_ACTIVATIONS:
            raise ValueError(f"Dense module {spec['path']!r} uses activation {spec['activation']!r}, "
                             f"which is not supported; supported: {sorted(DENSE_ACTIVATIONS)}")
        self.linear = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
        self.act = DENSE_ACTIVATIONS[spec["activation"]]
        self.use_residual = spec.get("residual", False)
        if self.use_residual and spec["in_features"] != spec["out_features"]:
            self.residual = nn.Linear(spec["in_features"], spec["out_features"], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.linear.weight.dtype)
        out = self.act(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class DensePooler(nn.Module):
    """Pool, then the folder's modules after pooling in modules.json order (Dense in the model
    dtype, Normalize), then truncate to `dimensions` and normalize as `Pooler`. `post` is the
    layout's list of ("dense", spec) / ("normalize", None); `normalize` is the resolved setting:
    False drops the folder's Normalize modules, True on a folder without one adds it at the end.
    Parameters are named `<module folder>.linear.*` (e.g. `2_Dense.linear.weight`), as the
    loader names the tensors of a module subfolder. `width` is the output's width."""

    def __init__(self, pooling: str, normalize: bool, dimensions: int | None,
                 post: tuple, hidden_size: int):
        super().__init__()
        self.pooler = Pooler(pooling, normalize=False, dimensions=None)
        self.normalize, self.dimensions = normalize, dimensions
        self.steps: list[str | None] = []          # a Dense child's name, or None: normalize
        width = hidden_size * len(self.pooler.pools)
        for op, spec in post:
            if op == "normalize":
                if normalize:
                    self.steps.append(None)
                continue
            if spec["in_features"] != width:
                raise ValueError(f"Dense module {spec['path']!r} takes {spec['in_features']} features, "
                                 f"but {width} arrive (pooling {pooling!r} over hidden size {hidden_size})")
            name = spec["path"].replace(".", "_")
            self.add_module(name, Dense(spec))
            self.steps.append(name)
            width = spec["out_features"]
        self.width = min(dimensions, width) if dimensions else width
        if normalize and None not in self.steps:
            self.steps.append(None)
        if dimensions is not None and dimensions > width:
            raise ValueError(f"dimensions={dimensions} exceeds the output width {width} of this folder")

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.post(self.pooler.pool(hidden, batch))   # (B, k*H) float32 -> (B, width)

    def post(self, out: torch.Tensor) -> torch.Tensor:
        """The modules after pooling (Dense, Normalize), then Matryoshka truncation."""
        for name in self.steps:
            out = F.normalize(out.float(), p=2.0, dim=-1) if name is None else getattr(self, name)(out)
        out = out.float()                                    # (B, width)
        if self.dimensions is not None:                      # Matryoshka: cut, then renormalize
            out = out[:, : self.dimensions]
            out = F.normalize(out, p=2.0, dim=-1) if self.normalize else out
        return out
