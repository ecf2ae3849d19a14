"""Reference attention: explicit softmax(QK^T)V over the whole packed batch with a block-diagonal mask.

Slow and memory-hungry (T x T scores) on purpose: it is the ground truth the other backends are
tested against. Computes in float32 whatever the input dtype.
"""
from __future__ import annotations

import torch

from .base import AttentionBackend, AttentionMetadata


class NaiveAttention(AttentionBackend):
    name = "naive"

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        T = q.shape[0]
        seq_id = torch.repeat_interleave(
            torch.arange(meta.num_seqs, device=q.device),
            torch.tensor(meta.seqlens, device=q.device), output_size=T)
        allowed = seq_id[:, None] == seq_id[None, :]                      # (T, T)
        if meta.causal:
            pos = torch.arange(T, device=q.device)
            allowed &= pos[None, :] <= pos[:, None]
        scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale  # (H, T, T)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)  # (T, H, D)
