"""MPNet (all-mpnet-base-v2) over packed tokens: a BERT-shaped encoder plus a relative position bias.

The bias is T5-style: each (query, key) offset j - i falls into one of 32 buckets (exact below 8
either way, logarithmic up to 128, one bucket per direction beyond), each bucket has a learned
value per head (`encoder.relative_attention_bias`, shared by every layer). It depends only on
the offset, so one (H, L_max, L_max) table per batch serves every sequence as its top-left
corner; the attention interface adds it to the scores (`meta.bias`). A backend without bias
support (flash, torch_varlen) runs this model's attention through per-sequence SDPA, logged once.

Positions start at padding_idx + 1 = 2, as RoBERTa's. Parameter names follow Hugging Face
(`mpnet.` prefix stripped); q/k/v are fused into `qkv`. No token types.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from attention import AttentionBackend, AttentionMetadata

from .bert import BertLayer
from .layers import FusedQKVSelfAttention, LayerStack, PackedBody

# transformers' MPNetEncoder.compute_position_bias uses these, whatever
# config.relative_attention_num_buckets says (its default is the same 32).
_NUM_BUCKETS, _MAX_DISTANCE = 32, 128
_PADDING_IDX = 1  # MPNetEmbeddings hard-codes it


def relative_position_bucket(relative: torch.Tensor, num_buckets: int = _NUM_BUCKETS,
                             max_distance: int = _MAX_DISTANCE) -> torch.Tensor:
    """Offsets j - i (any shape, int64) -> bucket ids, as transformers' MPNet computes them."""
    n = -relative
    half = num_buckets // 2
    ret = (n < 0).long() * half                     # keys after the query use the upper half
    n = n.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return ret + torch.where(n < max_exact, n, large)


class MPNetEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, positions):
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions + _PADDING_IDX + 1)
        return self.LayerNorm(x)                                           # (T, hidden)


class MPNetAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn = FusedQKVSelfAttention(cfg.hidden_size, cfg.num_attention_heads, ("qkv", "o"))
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, meta, backend):
        return self.LayerNorm(self.attn(x, meta, backend) + x)


class MPNetEncoder(LayerStack):
    def __init__(self, cfg):
        super().__init__(BertLayer(cfg, MPNetAttention) for _ in range(cfg.num_hidden_layers))
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets,
                                                    cfg.num_attention_heads)

    def position_bias(self, n: int) -> torch.Tensor:
        """(H, n, n): the bias of every (query i, key j) pair of an n-token sequence."""
        pos = torch.arange(n, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None])    # (n, n)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)      # (H, n, n)

    def forward(self, x, meta: AttentionMetadata, backend):
        table = self.position_bias(meta.max_seqlen)                        # (H, L_max, L_max)
        lens = meta.seqlens
        meta = meta.with_bias(lambda i: table[:, :lens[i], :lens[i]], table=table)
        return super().forward(x, meta, backend)


class MPNetModel(PackedBody):
    """Bidirectional encoder; returns the last hidden states of the packed batch, (T, hidden)."""

    packed_modules_mapping = {"q": ("qkv", 0), "k": ("qkv", 1), "v": ("qkv", 2)}
    ignored_prefixes = ("pooler.", "lm_head.", "embeddings.position_ids", "classifier.")
    checkpoint_prefixes = ("mpnet.",)

    def __init__(self, cfg):
        super().__init__(cfg, cfg.max_position_embeddings - _PADDING_IDX - 1)
        self.embeddings = MPNetEmbeddings(cfg)
        self.encoder = MPNetEncoder(cfg)

    def forward(self, input_ids, positions, token_type_ids, meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids, positions), meta, backend)
