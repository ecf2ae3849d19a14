"""Reference attention: explicit softmax(QK^T)V over the whole packed batch with a block-diagonal mask.

Slow and memory-hungry (T x T scores) on purpose: it is the ground truth the other backends are
tested against. Computes in float32 whatever the input dtype. A window masks |i - j| by the
positions within each sequence; a per-sequence bias is added on its diagonal block.
"""
from __future__ import annotations

import torch

from .base import AttentionBackend, AttentionMetadata, Window


class NaiveAttention(AttentionBackend):
    name = "naive"

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float,
                window: Window | None = None) -> torch.Tensor:
        T = q.shape[0]
        seq_id = torch.repeat_interleave(
            torch.arange(meta.num_seqs, device=q.device),
            torch.tensor(meta.seqlens, device=q.device), output_size=T)
        allowed = seq_id[:, None] == seq_id[None, :]                      # (T, T)
        # Within one sequence the global index difference is the position difference.
        pos = torch.arange(T, device=q.device)
        delta = pos[None, :] - pos[:, None]                               # (T, T): j - i
        if meta.causal:
            allowed &= delta <= 0
        if window is not None:
            left, right = window
            if left >= 0:
                allowed &= delta >= -left
            if right >= 0:
                allowed &= delta <= right
        scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale  # (H, T, T)
        if meta.bias is not None:
            start = 0
            for i, n in enumerate(meta.seqlens):
                scores[:, start:start + n, start:start + n] += meta.bias(i).float()  # (H, n, n)
                start += n
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)  # (T, H, D)
