"""ModernBERT (gte-modernbert, modernbert-embed, nomic-modernbert) over packed tokens.

Pre-norm encoder: token embeddings -> LayerNorm, then per layer `attn_norm` (identity in layer
0) -> fused Wqkv -> RoPE -> attention -> Wo, and `mlp_norm` -> GeGLU (Wi gives input and gate:
Wo(act(input) * gate)), then `final_norm`. Layers alternate per `config.layer_types`: global
("full_attention", RoPE theta 160k) every `global_attn_every_n_layers`, the others local
("sliding_attention", theta 10k) with a symmetric window: a token sees keys within
`local_attention // 2` positions either side, passed to the attention backend as
`window=(w, w)`. No biases by default (`attention_bias`, `mlp_bias`, `norm_bias`).
Parameter names follow Hugging Face (`model.` prefix of *ForMaskedLM stripped).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from attention import AttentionBackend, AttentionMetadata

from .layers import GatedMLP, PackedBody, activation
from .rotary import Rotary


def _layer_rotary(cfg, layer_type: str, head_dim: int) -> Rotary:
    """RoPE for one layer type: transformers 5 keeps one rope dict per type in rope_parameters."""
    params = cfg.rope_parameters[layer_type]
    return Rotary(SimpleNamespace(rope_parameters=params,
                                  max_position_embeddings=cfg.max_position_embeddings), head_dim)


class ModernBertEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)

    def forward(self, input_ids):
        return self.norm(self.tok_embeddings(input_ids))                  # (T, hidden)


class ModernBertAttention(nn.Module):
    def __init__(self, cfg, layer_type: str):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.attention_bias)
        self.Wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.attention_bias)
        half = cfg.local_attention // 2
        self.window = (half, half) if layer_type == "sliding_attention" else None

    def forward(self, x, cos_sin, meta: AttentionMetadata, backend: AttentionBackend):
        T = x.shape[0]
        q, k, v = self.Wqkv(x).view(T, 3, self.num_heads, self.head_dim).unbind(1)  # (T, H, D)
        q, k = Rotary.apply(q, *cos_sin), Rotary.apply(k, *cos_sin)
        out = backend.forward(q, k, v, meta, window=self.window)          # (T, H, D)
        return self.Wo(out.reshape(T, -1))                                 # (T, hidden)


class ModernBertEncoderLayer(nn.Module):
    def __init__(self, cfg, index: int):
        super().__init__()
        self.layer_type = cfg.layer_types[index]
        self.attn_norm = nn.Identity() if index == 0 else \
            nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.attn = ModernBertAttention(cfg, self.layer_type)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        act = activation(cfg.hidden_activation, "hidden_activation")
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, act, cfg.mlp_bias, ("Wi", "Wo"))  # GeGLU

    def forward(self, x, cos_sin, meta, backend):
        x = x + self.attn(self.attn_norm(x), cos_sin, meta, backend)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertModel(PackedBody):
    """Bidirectional encoder; returns the final-norm hidden states of the packed batch, (T, hidden)."""

    ignored_prefixes = ("head.", "decoder.", "classifier.")

    def __init__(self, cfg):
        super().__init__(cfg)
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.rotary = {t: _layer_rotary(cfg, t, head_dim) for t in sorted(set(cfg.layer_types))}
        self.embeddings = ModernBertEmbeddings(cfg)
        self.layers = nn.ModuleList(ModernBertEncoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)

    def forward(self, input_ids, positions, token_type_ids, meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        x = self.embeddings(input_ids)                                     # (T, hidden)
        cos_sin = {t: r.cos_sin(positions, x.dtype) for t, r in self.rotary.items()}  # (T, 1, D/2) x 2
        for layer in self.layers:
            x = layer(x, cos_sin[layer.layer_type], meta, backend)
        return self.final_norm(x)
