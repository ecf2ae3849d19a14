"""Token-level head of task="tokens": one vector per kept token, ragged (see `ragged.py`).

    plain folder:        v_t = h_t                                   (T, H) -> (T, H)
    multi-vector folder: v_t = normalize(act(W h_t + b)), t kept     (T, H) -> (N, d)

`kept` is the batch's `keep` mask (documents drop skip-list tokens; everything else, query
expansion pads included, is kept). W (and b) are the folder's token projection (`1_Dense/`,
HF name `linear.*`, its own weights file); act is identity or tanh. Output: values (N, d)
float32 and offsets (B+1,) of each sequence's rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.input_builder import PackedBatch
from ..loading.multi_vector_folder import MultiVectorLayout
from .ragged import offsets_from_counts, segment_counts

_ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh}


class TokenHead(nn.Module):
    def __init__(self, hidden_size: int, layout: MultiVectorLayout | None, folder=None):
        super().__init__()
        projection = layout.projection if layout else None
        self.normalize = bool(layout and layout.normalize)
        self.width = projection.out_features if projection else hidden_size
        self.side_weights = {}
        if projection is not None:
            if projection.in_features != hidden_size:
                raise ValueError(f"{projection.folder}: the projection takes {projection.in_features} "
                                 f"features but the model's hidden size is {hidden_size}")
            self.linear = nn.Linear(hidden_size, projection.out_features, bias=projection.bias)
            self.act = _ACTIVATIONS[projection.activation]
            self.side_weights = {"": folder.side_weights(projection.folder / "model.safetensors",
                                                         projection.folder / "pytorch_model.bin")}

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> dict[str, torch.Tensor]:
        B = batch.seqlens.shape[0]
        if batch.keep is None:
            rows, offsets = hidden, batch.attn.cu_seqlens.long()                 # (T, H), (B+1,)
        else:
            kept = batch.keep.nonzero().squeeze(1)                               # (N,)
            rows = hidden.index_select(0, kept)                                  # (N, H)
            offsets = offsets_from_counts(segment_counts(batch.seq_ids[kept], B))
        if hasattr(self, "linear"):
            rows = self.act(self.linear(rows))                                   # (N, d)
        rows = rows.float()
        if self.normalize:
            rows = F.normalize(rows, p=2.0, dim=-1)
        return {"values": rows, "offsets": offsets}


def build(folder, resolved, processor) -> TokenHead:
    """Workflow head builder: the folder's multi-vector layout (read by the input processor)."""
    return TokenHead(folder.hf_config.hidden_size, processor.layout, folder)
