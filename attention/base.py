"""The attention interface every backend implements, and the metadata it reads.

Tensors are packed: all sequences of a batch laid end to end, no padding. q is (T, H, D),
k and v are (T, Hkv, D) with H a multiple of Hkv (grouped-query attention is resolved here,
once, so backends and models never see it unless they handle it natively).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class AttentionMetadata:
    """Where each sequence lives in the packed batch. Built once per batch, shared by all layers."""

    cu_seqlens: torch.Tensor      # (B+1,) int32, on the compute device
    max_seqlen: int
    seqlens: list[int]            # host copy of the lengths, for backends that loop or bucket
    causal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific precomputed plans

    @property
    def num_seqs(self) -> int:
        return len(self.seqlens)


class AttentionBackend:
    """Base class: `forward(q, k, v, meta) -> (T, H, D)`.

    Subclasses set `name`, implement `_attend`, and may override `available` (returning the
    reason they cannot run, or None) and `prepare` (precompute per-batch plans into meta.extra).
    """

    name: ClassVar[str] = "base"
    native_gqa: ClassVar[bool] = False

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype

    @classmethod
    def available(cls, device: torch.device, dtype: torch.dtype) -> str | None:
        """None if this backend can run on `device` in `dtype`, else the reason it cannot."""
        return None

    def prepare(self, meta: AttentionMetadata) -> AttentionMetadata:
        """Precompute whatever the backend needs per batch (called once, on the CPU side)."""
        return meta

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata, scale: float | None = None) -> torch.Tensor:
        assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == v.shape[0]
        if k.shape[1] != q.shape[1] and not self.native_gqa:
            k, v = expand_kv(k, v, q.shape[1])
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return self._attend(q, k, v, meta, scale)

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        raise NotImplementedError


def expand_kv(k: torch.Tensor, v: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each KV head for its group of query heads: (T, Hkv, D) -> (T, H, D)."""
    hkv = k.shape[1]
    if num_heads % hkv:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({hkv})")
    rep = num_heads // hkv
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
