"""DistilBERT (msmarco-distilbert, multilingual distil models) over packed tokens.

A six-layer BERT without token types or pooler: embeddings (word + position, LayerNorm), then
per layer attention -> `sa_layer_norm` and FFN -> `output_layer_norm`, post-norm with eps 1e-12
as transformers hard-codes. Position embeddings are read from the checkpoint whether the config
says learned or `sinusoidal_pos_embds` (transformers saves the sinusoidal table as
`embeddings.position_embeddings.weight`, so the same load serves both). Parameter names follow
Hugging Face (`distilbert.` prefix stripped); q_lin/k_lin/v_lin are fused into `qkv_lin`.
"""
from __future__ import annotations

import torch
from torch import nn

from attention import AttentionBackend, AttentionMetadata

from .layers import FusedQKVSelfAttention, LayerStack, LinearAct, PackedBody

_EPS = 1e-12  # transformers' DistilBERT LayerNorms


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.dim)
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=_EPS)

    def forward(self, input_ids, positions):
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class FFN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.lin1 = LinearAct(cfg.dim, cfg.hidden_dim, cfg.activation)
        self.lin2 = nn.Linear(cfg.hidden_dim, cfg.dim)

    def forward(self, x):
        return self.lin2(self.lin1(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = FusedQKVSelfAttention(cfg.dim, cfg.n_heads, ("qkv_lin", "out_lin"))
        self.sa_layer_norm = nn.LayerNorm(cfg.dim, eps=_EPS)
        self.ffn = FFN(cfg)
        self.output_layer_norm = nn.LayerNorm(cfg.dim, eps=_EPS)

    def forward(self, x, meta, backend):
        x = self.sa_layer_norm(self.attention(x, meta, backend) + x)
        return self.output_layer_norm(self.ffn(x) + x)


class DistilBertModel(PackedBody):
    """Bidirectional encoder; returns the last hidden states of the packed batch, (T, dim)."""

    packed_modules_mapping = {"q_lin": ("qkv_lin", 0), "k_lin": ("qkv_lin", 1), "v_lin": ("qkv_lin", 2)}
    # The MLM head (vocab_*) and classifier heads are not part of the body.
    ignored_prefixes = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.",
                        "pre_classifier.", "classifier.", "embeddings.position_ids")
    checkpoint_prefixes = ("distilbert.",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.embeddings = Embeddings(cfg)
        self.transformer = LayerStack(TransformerBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, input_ids, positions, token_type_ids, meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        return self.transformer(self.embeddings(input_ids, positions), meta, backend)
