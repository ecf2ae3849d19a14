"""Gemma3 text with bidirectional attention (EmbeddingGemma) over packed tokens.

Per layer: `input_layernorm` -> q/k/v (fused `qkv_proj`) -> per-head `q_norm`/`k_norm` -> RoPE
-> attention scaled by `query_pre_attn_scalar ** -0.5` -> `o_proj` -> `post_attention_layernorm`
-> residual; `pre_feedforward_layernorm` -> gated MLP down(gelu_tanh(gate(x)) * up(x)) ->
`post_feedforward_layernorm` -> residual; then `norm`. Every RMSNorm scales by (1 + weight),
in float32. Token embeddings are multiplied by sqrt(hidden_size) rounded to the compute dtype,
as transformers does.

Layers follow `config.layer_types`: "full_attention" (RoPE theta 1M) sees the whole sequence;
"sliding_attention" (theta 10k) sees a band. transformers stores a bidirectional model's window
as `sliding_window = saved // 2 + 1` and lets a token see keys at distance < that, so the band
passed to the attention backend is `window=(W - 1, W - 1)` (EmbeddingGemma: 512 saved, 256
either side). Served only with bidirectional attention (the decoder_bidirectional workflow):
a config with `use_bidirectional_attention` false is refused rather than run the wrong way.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from attention import AttentionBackend, AttentionMetadata

from .layers import GatedMLP, PackedBody, RMSNorm, activation, gated_packed_modules
from .modernbert import _layer_rotary
from .rotary import Rotary


class Gemma3Attention(nn.Module):
    def __init__(self, cfg, layer_type: str):
        super().__init__()
        self.num_heads, self.num_kv_heads, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.head_dim = D
        self.sizes = (self.num_heads * D, self.num_kv_heads * D, self.num_kv_heads * D)
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.sizes), bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * D, cfg.hidden_size, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(D, cfg.rms_norm_eps, zero_centred=True)
        self.k_norm = RMSNorm(D, cfg.rms_norm_eps, zero_centred=True)
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        w = cfg.sliding_window
        self.window = (w - 1, w - 1) if layer_type == "sliding_attention" else None

    def forward(self, x, cos_sin, meta: AttentionMetadata, backend: AttentionBackend):
        T, D = x.shape[0], self.head_dim
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = self.q_norm(q.view(T, self.num_heads, D))                       # (T, H, D)
        k = self.k_norm(k.view(T, self.num_kv_heads, D))                    # (T, Hkv, D)
        v = v.view(T, self.num_kv_heads, D)                                 # (T, Hkv, D)
        q, k = Rotary.apply(q, *cos_sin), Rotary.apply(k, *cos_sin)
        out = backend.forward(q, k, v, meta, scale=self.scale, window=self.window)  # (T, H, D)
        return self.o_proj(out.reshape(T, self.num_heads * D))             # (T, hidden)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg, index: int):
        super().__init__()
        self.layer_type = cfg.layer_types[index]
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps, zero_centred=True)
        self.self_attn = Gemma3Attention(cfg, self.layer_type)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps, zero_centred=True)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, zero_centred=True)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size,
                            activation(cfg.hidden_activation, "hidden_activation"), bias=False)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, zero_centred=True)

    def forward(self, x, cos_sin, meta, backend):
        h = self.self_attn(self.input_layernorm(x), cos_sin, meta, backend)
        x = x + self.post_attention_layernorm(h)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3TextModel(PackedBody):
    """EmbeddingGemma body; returns the final-norm hidden states of the packed batch, (T, hidden)."""

    ignored_prefixes = ("lm_head.", "rotary_emb.")

    def __init__(self, cfg):
        if not getattr(cfg, "use_bidirectional_attention", False):
            raise ValueError("Gemma3TextModel is served as a bidirectional embedding model "
                             "(EmbeddingGemma), but this config.json has use_bidirectional_attention"
                             "=false; a causal Gemma3 is not supported for embeddings")
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            raise ValueError(f"attn_logit_softcapping={cfg.attn_logit_softcapping} is not supported; "
                             "only None (as Gemma3 and EmbeddingGemma ship)")
        super().__init__(cfg)
        self.embed_scale = math.sqrt(cfg.hidden_size)
        self.rotary = {t: _layer_rotary(cfg, t, cfg.head_dim) for t in sorted(set(cfg.layer_types))}
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, zero_centred=True)
        q, kv = self.layers[0].self_attn.sizes[:2] if self.layers else (0, 0)
        self.packed_modules_mapping = gated_packed_modules(q, kv, cfg.intermediate_size)

    def forward(self, input_ids, positions, token_type_ids, meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(input_ids)                                   # (T, hidden)
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)             # scale rounded as HF does
        cos_sin = {t: r.cos_sin(positions, x.dtype) for t, r in self.rotary.items()}  # (T, 1, D/2) x 2
        for layer in self.layers:
            x = layer(x, cos_sin[layer.layer_type], meta, backend)
        return self.norm(x)
