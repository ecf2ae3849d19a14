"""Decoder-only transformers (Qwen2, Qwen3, Llama, Mistral) over packed tokens, for embeddings.

One implementation covers the four families; they differ only in what `DecoderSpec` records
(q/k/v bias, Qwen3's per-head q/k RMSNorm, Llama's optional biases). Module and parameter names
follow Hugging Face, so `*Model` and `*ForCausalLM` checkpoints load by name (the LM head is
ignored). q/k/v and gate/up are fused into `qkv_proj` and `gate_up_proj`; the shard layout
(different sizes under grouped-query attention) is declared once in `packed_modules_mapping`.
Attention goes through the selected backend with K/V at their own head count (GQA is resolved
in the attention interface). Causality is not decided here: the workflow declares it and the
input builder puts it in `meta.causal` (causal by default, bidirectional for LLM2Vec-style models).
An LLM reranker's two LM-head rows are the workflow's head (`workers/heads/yes_no_head.py`).

Sliding-window attention (Mistral, Qwen2 with use_sliding_window) is handled by capping
`max_length` at the window: every sequence then fits inside it and full causal attention is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attention import AttentionBackend, AttentionMetadata

from .layers import GatedMLP, PackedBody, RMSNorm, activation, gated_packed_modules
from .rotary import Rotary


@dataclass(frozen=True)
class DecoderSpec:
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool


def _spec(cfg) -> DecoderSpec:
    kind = cfg.model_type
    if kind == "qwen2":
        return DecoderSpec(qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False)
    bias = bool(getattr(cfg, "attention_bias", False))
    return DecoderSpec(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
                       qk_norm=kind == "qwen3")


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


class DecoderAttention(nn.Module):
    def __init__(self, cfg, spec: DecoderSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = D = _head_dim(cfg)
        self.sizes = (self.num_heads * D, self.num_kv_heads * D, self.num_kv_heads * D)
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.sizes), bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * D, cfg.hidden_size, bias=spec.o_bias)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm:  # Qwen3: RMSNorm over each head's D features, before the rotation
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps)

    def forward(self, x, cos_sin, meta: AttentionMetadata, backend: AttentionBackend):
        T, D = x.shape[0], self.head_dim
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = q.view(T, self.num_heads, D)                                   # (T, H, D)
        k = k.view(T, self.num_kv_heads, D)                                # (T, Hkv, D)
        v = v.view(T, self.num_kv_heads, D)                                # (T, Hkv, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = Rotary.apply(q, *cos_sin), Rotary.apply(k, *cos_sin)
        out = backend.forward(q, k, v, meta, scale=D ** -0.5)              # (T, H, D)
        return self.o_proj(out.reshape(T, self.num_heads * D))             # (T, hidden)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, spec: DecoderSpec):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DecoderAttention(cfg, spec)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size,   # SwiGLU
                            activation(cfg.hidden_act, "hidden_act"), spec.mlp_bias)

    def forward(self, x, cos_sin, meta, backend):
        # In place on the residual stream: x is this forward's own tensor (embedding output).
        x.add_(self.self_attn(self.input_layernorm(x), cos_sin, meta, backend))
        return x.add_(self.mlp(self.post_attention_layernorm(x)))


def _sliding_window(cfg) -> int | None:
    """The attention window when any layer uses one (Mistral; Qwen2/3 with use_sliding_window)."""
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if cfg.model_type in ("qwen2", "qwen3") and not getattr(cfg, "use_sliding_window", False):
        return None
    return int(window)


class DecoderModel(PackedBody):
    """Qwen2/Qwen3/Llama/Mistral body; returns the final-norm hidden states, (T, hidden)."""

    ignored_prefixes = ("lm_head.", "rotary_emb.", "score.")

    def __init__(self, cfg):
        spec, window = _spec(cfg), _sliding_window(cfg)
        super().__init__(cfg, min(cfg.max_position_embeddings, window or cfg.max_position_embeddings))
        self.rotary = Rotary(cfg, _head_dim(cfg))
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, spec) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        q, kv = self.layers[0].self_attn.sizes[:2] if self.layers else (0, 0)
        self.packed_modules_mapping = gated_packed_modules(q, kv, cfg.intermediate_size)

    def forward(self, input_ids, positions, token_type_ids, meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(input_ids)                                   # (T, hidden)
        cos_sin = self.rotary.cos_sin(positions, x.dtype)                  # (T, 1, D/2) x 2
        for layer in self.layers:
            x = layer(x, cos_sin, meta, backend)
        return self.norm(x)
