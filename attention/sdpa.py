"""CPU default: torch scaled_dot_product_attention once per sequence, on views of the packed tensors.

Always 4-D input (3-D takes a ~4x slower math path), never a T x T mask over the whole batch, no
gather and no padding. Length-sorted padded buckets were measured against this single-threaded
on a real 4,096-token MiniLM batch (bf16, AMD EPYC with AVX512-BF16): per sequence 21.8 ms,
buckets of 2/4/8 23.1/28.7/33.1 ms, 8 padded to 16 36.8 ms (docs/BENCHMARKS.md); FACTS.md had
buckets of 8 ~7% ahead on a Sapphire Rapids CPU. Nothing selected them, so that path was removed
(git history: commit 3f80e94 and earlier); on a GPU the varlen kernels (flash, torch_varlen) are used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttentionBackend, AttentionMetadata


class SdpaAttention(AttentionBackend):
    name = "sdpa"

    def prepare(self, meta: AttentionMetadata) -> AttentionMetadata:
        starts = [0]
        for n in meta.seqlens[:-1]:
            starts.append(starts[-1] + n)
        meta.extra["sdpa_starts"] = starts
        return meta

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        starts = meta.extra.get("sdpa_starts") or self.prepare(meta).extra["sdpa_starts"]
        out = torch.empty_like(q)
        for start, n in zip(starts, meta.seqlens):
            s = slice(start, start + n)
            o = F.scaled_dot_product_attention(
                q[s].transpose(0, 1)[None], k[s].transpose(0, 1)[None], v[s].transpose(0, 1)[None],
                is_causal=meta.causal, scale=scale)                           # (1, H, L, D)
            out[s] = o[0].transpose(0, 1)
        return out
