"""Span head of task="chunks": sums of final hidden states per chunk piece (late chunking), or
the folder's own pooling of whole sequences (split chunking), over packed batches.

    late batch (`segments` set):  sums_p = sum over tokens t of piece p of h_t     (T, H) -> (P, H)
                                  ragged: values (P, H) float32, offsets (B+1,) of each sequence's pieces
    split batch (no `segments`):  the folder's pooler, exactly as task="embed"      (T, H) -> (B, width)
    post(means):                  the folder's modules after pooling (Dense, Normalize), then
                                  Matryoshka truncation (renormalized)               (n, H) -> (n, width)

A chunk's late vector is post(mean of its tokens' final states): the engine adds the sums of
its pieces (which may come from several macro windows), divides by its token count, then calls
`post`. Whatever the folder's pooling (cls, last, max, ...), late chunking pools a span by its
mean: a span has no [CLS] or last token of its own. The pooler's Dense modules are registered
here under their own names (`2_Dense.linear.weight`), so the loader fills them as for embed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..engine.input_builder import PackedBatch
from .pooling import DensePooler, Pooler


class SpanHead(nn.Module):
    def __init__(self, pooler: Pooler | DensePooler):
        super().__init__()
        if isinstance(pooler, nn.Module):
            for name, child in pooler.named_children():
                self.add_module(name, child)
        self.__dict__["pooler"] = pooler  # not a child: its modules are registered above
        self.width = getattr(pooler, "width", None)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor | dict[str, torch.Tensor]:
        if batch.segments is None:
            return self.pooler(hidden, batch)                                    # (B, width)
        rows = (batch.segments >= 0).nonzero().squeeze(1)                        # (T',)
        sums = torch.zeros(batch.num_pieces, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, batch.segments[rows], hidden.index_select(0, rows).float())  # (P, H)
        return {"values": sums, "offsets": batch.piece_offsets}

    @torch.inference_mode()
    def post(self, means: torch.Tensor) -> torch.Tensor:
        """(n, H) float32 span means -> (n, width) float32 chunk vectors."""
        return self.pooler.post(means).float()
