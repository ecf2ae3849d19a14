"""CPU default: torch scaled_dot_product_attention once per sequence, on views of the packed tensors.

Always 4-D input (3-D takes a ~4x slower math path), never a T x T mask over the whole batch, no
gather and no padding. Length-sorted padded buckets were measured against this single-threaded
on a real 4,096-token MiniLM batch (bf16, AMD EPYC with AVX512-BF16): per sequence 21.8 ms,
buckets of 2/4/8 23.1/28.7/33.1 ms, 8 padded to 16 36.8 ms (docs/BENCHMARKS.md); buckets of 8 were
~7% ahead on an idle Sapphire Rapids CPU (docs/DESIGN.md). Nothing selected them, so that path was removed
(git history: commit 3f80e94 and earlier); on a GPU the varlen kernels (flash, torch_varlen) are used.

A window or a per-sequence bias becomes `attn_mask`: the (L, L) corner of one band mask built per
batch and window, plus the sequence's (H, L, L) bias; without either, the plain (maskless) call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttentionBackend, AttentionMetadata, Window
from .mask import band


class SdpaAttention(AttentionBackend):
    name = "sdpa"

    def prepare(self, meta: AttentionMetadata) -> AttentionMetadata:
        starts = [0]
        for n in meta.seqlens[:-1]:
            starts.append(starts[-1] + n)
        meta.extra["sdpa_starts"] = starts
        return meta

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float,
                window: Window | None = None) -> torch.Tensor:
        starts = meta.extra.get("sdpa_starts") or self.prepare(meta).extra["sdpa_starts"]
        masked = window is not None or meta.bias is not None
        full = self._band(meta, window, q.device) if masked else None   # (L_max, L_max) bool | None
        out = torch.empty_like(q)
        for i, (start, n) in enumerate(zip(starts, meta.seqlens)):
            s = slice(start, start + n)
            mask = self._mask(meta, i, n, full, q.dtype) if masked else None  # (L, L) | (1, H, L, L)
            o = F.scaled_dot_product_attention(
                q[s].transpose(0, 1)[None], k[s].transpose(0, 1)[None], v[s].transpose(0, 1)[None],
                attn_mask=mask, is_causal=meta.causal and not masked, scale=scale)  # (1, H, L, D)
            out[s] = o[0].transpose(0, 1)
        return out

    @staticmethod
    def _band(meta: AttentionMetadata, window: Window | None, device) -> torch.Tensor | None:
        key = ("sdpa_band", window, meta.causal)
        if key not in meta.extra:
            meta.extra[key] = band(meta.max_seqlen, window, meta.causal, device)
        return meta.extra[key]

    @staticmethod
    def _mask(meta: AttentionMetadata, i: int, n: int, full: torch.Tensor | None, dtype):
        allowed = None if full is None else full[:n, :n]                  # (L, L) bool
        if meta.bias is None:
            return allowed
        bias = meta.bias(i).to(dtype)[None]                               # (1, H, L, L)
        return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
