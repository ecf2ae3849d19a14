"""bge-m3's three heads from one forward (FlagEmbedding's BGE-M3 formulas), over packed tokens:

    dense   = normalize(h_cls)                                         (B, H)
    sparse  w_t = relu(sparse_linear(h_t)),  (T, H) -> (T,); per sequence and token id the
            largest w_t, keeping w > 0 and dropping the special ids (cls, eos, pad, unk)
            -> indices (N,), values (N,), offsets (B+1,), sorted by index
    colbert = normalize(colbert_linear(h_t)) for every token after the first  (T - B, H) -> (T - B, d)
            -> colbert (T - B, d), colbert_offsets (B+1,)

The body is the folder's XLMRobertaModel; `colbert_linear` and `sparse_linear` are nn.Linear
layers saved beside it as `colbert_linear.pt` / `sparse_linear.pt` (pickled state dicts: read
only with allow_pickle, by torch.load(weights_only=True)) or `.safetensors` (keys weight, bias).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..engine.input_builder import PackedBatch
from ..loading.model_folder import SIDE_WEIGHTS
from .ragged import offsets_from_counts, segment_counts

HEADS = SIDE_WEIGHTS  # colbert_linear, sparse_linear


class BgeM3Head(nn.Module):
    def __init__(self, hidden_size: int, colbert_dim: int, special_ids: list[int], vocab_size: int,
                 side_weights: dict[str, Path]):
        super().__init__()
        self.colbert_linear = nn.Linear(hidden_size, colbert_dim)
        self.sparse_linear = nn.Linear(hidden_size, 1)
        self.side_weights = side_weights
        self.width = hidden_size
        self.vocab_size = vocab_size
        self.special_ids = sorted(set(special_ids))   # a list: buffers of a meta-built head are not kept

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> dict[str, torch.Tensor]:
        B = batch.seqlens.shape[0]
        first = batch.attn.cu_seqlens[:-1].long()                                # (B,)
        out = {"dense": F.normalize(hidden.index_select(0, first).float(), dim=-1)}
        out.update(self._sparse(hidden, batch, B))
        is_first = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        is_first[first] = True
        rest = (~is_first).nonzero().squeeze(1)                                  # (T - B,)
        colbert = self.colbert_linear(hidden.index_select(0, rest)).float()      # (T - B, d)
        out["colbert"] = F.normalize(colbert, dim=-1)
        out["colbert_offsets"] = offsets_from_counts(batch.seqlens - 1)
        return out

    def _sparse(self, hidden, batch: PackedBatch, B: int) -> dict[str, torch.Tensor]:
        w = torch.relu(self.sparse_linear(hidden).float()).squeeze(1)            # (T,)
        ids = batch.input_ids
        special = torch.tensor(self.special_ids, dtype=ids.dtype, device=ids.device)
        live = ((w > 0) & ~torch.isin(ids, special)).nonzero().squeeze(1)
        keys = batch.seq_ids[live] * self.vocab_size + ids[live]                 # (n,) seq-major
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)     # (N,)
        values = torch.zeros(uniq.shape[0], dtype=torch.float32, device=hidden.device)
        values.scatter_reduce_(0, inverse, w[live], "amax", include_self=False)
        return {"sparse_indices": (uniq % self.vocab_size).int(), "sparse_values": values,
                "sparse_offsets": offsets_from_counts(segment_counts(uniq // self.vocab_size, B))}


def _out_features(path: Path) -> int:
    """Rows of `weight` in a side file, without materializing a safetensors tensor."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("weight").get_shape()[0]
    return torch.load(str(path), map_location="cpu", weights_only=True)["weight"].shape[0]


def build(folder, resolved, processor) -> BgeM3Head:
    files = {name: folder.side_weights(folder.path / f"{name}.safetensors", folder.path / f"{name}.pt")
             for name in HEADS}
    tok = processor.tokenizer
    special = [i for i in (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
               if i is not None]
    cfg = folder.hf_config
    return BgeM3Head(cfg.hidden_size, _out_features(files["colbert_linear"]), special,
                     cfg.vocab_size, files)
