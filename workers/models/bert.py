"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa) over packed tokens.

Module and parameter names follow Hugging Face so checkpoints load by name; query/key/value are
fused into one `qkv` projection (declared in `packed_modules_mapping`). Input is the packed
batch: (T,) ids and positions, no padding; attention runs through the selected backend.
"""
from __future__ import annotations

import torch
from torch import nn

from attention import AttentionBackend, AttentionMetadata

from .layers import LayerStack, LinearAct, LinearAdd, PackedBody

# RoBERTa-style models number positions from padding_idx + 1.
_OFFSET_POSITION_TYPES = {"roberta", "xlm-roberta", "camembert"}


class BertEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(cfg.type_vocab_size, 1), cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, positions, token_type_ids):
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:  # every token is type 0
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)                                           # (T, hidden)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)

    def forward(self, x, meta: AttentionMetadata, backend: AttentionBackend):
        T = x.shape[0]
        q, k, v = self.qkv(x).view(T, 3, self.num_heads, self.head_dim).unbind(1)  # (T, H, D) each
        return backend.forward(q, k, v, meta).reshape(T, -1)              # (T, hidden)


class BertOutput(nn.Module):
    """dense -> residual add -> LayerNorm (the shape of both sublayer outputs in BERT)."""

    def __init__(self, d_in, d_out, eps):
        super().__init__()
        self.dense = LinearAdd(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x, residual))


class BertAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self = BertSelfAttention(cfg)  # HF name: attention.self.*
        self.output = BertOutput(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, meta, backend):
        return self.output(self.self(x, meta, backend), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = LinearAct(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x):
        return self.dense(x)


class BertLayer(nn.Module):
    """attention (+ residual, LayerNorm) -> intermediate -> output (+ residual, LayerNorm);
    `attention`: the attention sublayer's class (MPNet brings its own)."""

    def __init__(self, cfg, attention=BertAttention):
        super().__init__()
        self.attention = attention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, meta, backend):
        x = self.attention(x, meta, backend)
        return self.output(self.intermediate(x), x)


class BertModel(PackedBody):
    """Bidirectional encoder; returns the last hidden states of the packed batch, (T, hidden)."""

    packed_modules_mapping = {"query": ("qkv", 0), "key": ("qkv", 1), "value": ("qkv", 2)}
    # Checkpoint tensors the body does not use (a classifier head, when the workflow has one,
    # takes pooler./classifier. before they are ignored).
    ignored_prefixes = ("pooler.", "cls.", "lm_head.", "embeddings.position_ids",
                        "embeddings.token_type_ids", "classifier.")
    checkpoint_prefixes = ("bert.", "roberta.", "model.")

    def __init__(self, cfg):
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={cfg.position_embedding_type!r} is not "
                             "supported; only 'absolute'")
        offset = cfg.pad_token_id + 1 if cfg.model_type in _OFFSET_POSITION_TYPES else 0
        super().__init__(cfg, cfg.max_position_embeddings - offset)
        self.position_offset = offset
        self.uses_token_types = cfg.type_vocab_size > 1
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = LayerStack(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids, positions, token_type_ids, meta: AttentionMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        x = self.embeddings(input_ids, positions + self.position_offset, token_type_ids)
        return self.encoder(x, meta, backend)
