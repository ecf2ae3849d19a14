"""Attention for batches holding query-only tokens (ColBERT query expansion with `attend: false`).

A query-only token attends to the attended tokens of its sequence but no token attends to it, as
Hugging Face computes it with `attention_mask == 0` at those positions (the mask hides keys, every
position still queries). The engine's backends take one block-diagonal mask, so such a batch (short
queries only) runs through this wrapper instead: pad to (B, H, L, D), key mask (B, 1, 1, L),
`scaled_dot_product_attention`, unpad. Every other batch keeps the engine's backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attention import AttentionBackend, AttentionMetadata


class QueryOnlyAttention(AttentionBackend):
    name = "query_only"

    def __init__(self, inner: AttentionBackend, attended: torch.Tensor, meta: AttentionMetadata):
        super().__init__(inner.device, inner.dtype)
        if meta.causal:
            raise ValueError("query-only tokens (query expansion with attend=false) need a "
                             "bidirectional encoder")
        lens = torch.tensor(meta.seqlens, device=attended.device)
        L, T = meta.max_seqlen, attended.shape[0]
        slot = torch.arange(L, device=attended.device)
        self.valid = slot[None, :] < lens[:, None]                                # (B, L)
        starts = meta.cu_seqlens[:-1].long()[:, None]
        self.index = torch.where(self.valid, starts + slot[None, :], T)           # (B, L), T: a pad row
        keys = torch.cat([attended, attended.new_zeros(1)])[self.index]           # (B, L)
        self.key_mask = keys[:, None, None, :]                                    # (B, 1, 1, L)

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float, window=None) -> torch.Tensor:
        if window is not None or meta.bias is not None:
            raise ValueError("query expansion with attend=false is not supported for models with an "
                             "attention bias or sliding window (MPNet, ModernBERT, Gemma3); use a "
                             "BERT-family body or attend=true")
        def pad(x):                                                               # (T, H, D) -> (B, H, L, D)
            return torch.cat([x, x.new_zeros(1, *x.shape[1:])])[self.index].transpose(1, 2)
        out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=self.key_mask,
                                             scale=scale)                         # (B, H, L, D)
        return out.transpose(1, 2)[self.valid]                                    # (T, H, D)
