"""The attention interface every backend implements, and the metadata it reads.

Tensors are packed: all sequences of a batch laid end to end, no padding. q is (T, H, D),
k and v are (T, Hkv, D) with H a multiple of Hkv (grouped-query attention is resolved here,
once, so backends and models never see it unless they handle it natively).

Two optional features, both declared per call site and resolved here, not in each model:
- `meta.bias`: an additive per-head score bias per sequence (MPNet's relative position bias),
  `bias(i) -> (H, L_i, L_i)`, added to the scaled scores before the softmax. A model computes it
  once per batch (`meta.with_bias(...)`) and every layer shares it.
- `window=(left, right)` on `forward`: query i sees key j only when i - left <= j <= i + right
  (inclusive, positions within the sequence; -1 = unbounded on that side). ModernBERT's local
  layers and Gemma3's bidirectional sliding layers pass it per layer.
A backend that cannot take one of them (`supports_bias`, `supports_window` false: the flash
kernels have no bias input) hands those calls to per-sequence SDPA, logged once with the reason.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

logger = logging.getLogger(__name__)

# Sequence index in the batch -> its additive score bias, (H, L_i, L_i).
SequenceBias = Callable[[int], torch.Tensor]
Window = tuple[int, int]


@dataclass
class AttentionMetadata:
    """Where each sequence lives in the packed batch. Built once per batch, shared by all layers."""

    cu_seqlens: torch.Tensor      # (B+1,) int32, on the compute device
    max_seqlen: int
    seqlens: list[int]            # host copy of the lengths, for backends that loop or bucket
    causal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific precomputed plans
    bias: SequenceBias | None = None  # additive score bias per sequence, set by the model
    # When every sequence's bias is the top-left (H, L_i, L_i) corner of one (H, L_max, L_max)
    # table (MPNet), the table itself: kernels that take a bias read it in place.
    bias_table: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seqlens)

    def with_bias(self, bias: SequenceBias, table: torch.Tensor | None = None) -> "AttentionMetadata":
        """A copy carrying `bias` (the backend plans in `extra` stay shared); `table` when each
        `bias(i)` is `table[:, :L_i, :L_i]`."""
        return dataclasses.replace(self, bias=bias, bias_table=table)


def normalize_window(window: Window | None, causal: bool) -> Window | None:
    """(left, right) with -1 for unbounded, right forced to 0 under causal; None when unbounded."""
    if window is None:
        return None
    left, right = (-1 if w is None or w < 0 else int(w) for w in window)
    if causal:
        right = 0
    if left < 0 and (right < 0 or causal):
        return None
    return left, right


class AttentionBackend:
    """Base class: `forward(q, k, v, meta, scale, window) -> (T, H, D)`.

    Subclasses set `name`, implement `_attend`, and may override `available` (returning the
    reason they cannot run, or None) and `prepare` (precompute per-batch plans into meta.extra).
    """

    name: ClassVar[str] = "base"
    # The backend that serves calls this one cannot (a bias, a window): per-sequence SDPA, wired
    # by the package's __init__ (sdpa.py subclasses this module, so it cannot import it back).
    fallback_class: ClassVar[type | None] = None
    native_gqa: ClassVar[bool] = False
    supports_bias: ClassVar[bool] = True
    supports_window: bool = True

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        self._fallback: AttentionBackend | None = None

    @classmethod
    def available(cls, device: torch.device, dtype: torch.dtype) -> str | None:
        """None if this backend can run on `device` in `dtype`, else the reason it cannot."""
        return None

    def prepare(self, meta: AttentionMetadata) -> AttentionMetadata:
        """Precompute whatever the backend needs per batch (called once, on the CPU side)."""
        return meta

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata, scale: float | None = None,
                window: Window | None = None) -> torch.Tensor:
        assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == v.shape[0]
        window = normalize_window(window, meta.causal)
        if (meta.bias is not None and not self.supports_bias) or (window and not self.supports_window):
            return self._fallback_backend(meta, window).forward(q, k, v, meta, scale, window)
        if k.shape[1] != q.shape[1] and not self.native_gqa:
            k, v = expand_kv(k, v, q.shape[1])
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return self._attend(q, k, v, meta, scale, window)

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float,
                window: Window | None) -> torch.Tensor:
        raise NotImplementedError

    def _fallback_backend(self, meta: AttentionMetadata, window: Window | None) -> "AttentionBackend":
        """Per-sequence SDPA for the calls this backend cannot serve; the reason logged once."""
        if self._fallback is None:
            need = "an additive score bias (e.g. MPNet's relative position bias)" \
                if meta.bias is not None else f"an attention window {window}"
            logger.warning(
                "attention backend %s cannot take %s: those attention calls run per-sequence SDPA "
                "instead (one kernel per sequence with its (H, L, L) bias/mask materialized, so "
                "slower than the varlen kernel on large batches)", self.name, need)
            self._fallback = AttentionBackend.fallback_class(self.device, self.dtype)
        return self._fallback


def expand_kv(k: torch.Tensor, v: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each KV head for its group of query heads: (T, Hkv, D) -> (T, H, D)."""
    hkv = k.shape[1]
    if num_heads % hkv:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({hkv})")
    rep = num_heads // hkv
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
