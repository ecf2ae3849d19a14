"""SPLADE head of task="sparse": the MLM head over packed tokens, pooled into one sparse vector.

    logits_t = decoder(LayerNorm(act(dense(h_t)))) + bias        (T, H) -> (T, V), V = vocab
    w_t      = log1p(relu(logits_t))          (log1p twice for activation "log1p_relu")
    s_b      = max over the tokens t of sequence b of w_t        (or sum; all tokens, special ones
                                                                   included, as SpladePooling)
    out      = the nonzero entries of s_b, by index              (B, V) -> indices, values, offsets

The (T, V) logits never exist whole: `chunk_tokens` rows at a time are projected, transformed
and reduced into the (B, V) float32 pool (scatter_reduce amax / index_add over sequence ids).
Parameters keep BERT's MLM head names (`cls.predictions.transform.dense`, `.LayerNorm`,
`.decoder`, `.bias`); a tied decoder (`tie_word_embeddings`) reads the word embeddings. Pooling
strategy and activation come from the folder's SpladePooling config (`st_layout.py`), default
max / relu as sentence-transformers' SparseEncoder.
"""
from __future__ import annotations


import torch
from torch import nn

from ..engine.input_builder import PackedBatch
from ..models.layers import ACTIVATIONS
from .ragged import offsets_from_counts, segment_counts

# Rows of the (chunk, V) logits computed at once: 2^24 float32 entries (64 MiB) per chunk.
CHUNK_ENTRIES = 1 << 24
STRATEGIES = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")


class _Transform(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class SpladeHead(nn.Module):
    checkpoint_prefixes = ("cls.predictions.",)

    def __init__(self, cfg, strategy: str = "max", activation: str = "relu"):
        super().__init__()
        if strategy not in STRATEGIES or activation not in SPLADE_ACTIVATIONS:
            raise ValueError(f"SpladePooling pooling_strategy={strategy!r} activation_function="
                             f"{activation!r}: supported {STRATEGIES} and {SPLADE_ACTIVATIONS}")
        self.strategy, self.activation = strategy, activation
        self.width = cfg.vocab_size
        self.transform = _Transform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.empty(cfg.vocab_size))
        self.chunk_tokens = max(1, CHUNK_ENTRIES // cfg.vocab_size)
        # checkpoint tensor -> (parameter, rows: None = all): the tied decoder, the bias's alias
        self.checkpoint_rows = {"cls.predictions.decoder.bias": ("bias", None)}
        if getattr(cfg, "tie_word_embeddings", True):
            for name in ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"):
                self.checkpoint_rows[name] = ("decoder.weight", None)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> dict[str, torch.Tensor]:
        B, V = batch.seqlens.shape[0], self.width
        pooled = torch.zeros(B, V, dtype=torch.float32, device=hidden.device)    # w >= 0: 0 is neutral
        for start in range(0, hidden.shape[0], self.chunk_tokens):
            h = hidden[start:start + self.chunk_tokens]                           # (c, H)
            logits = self.decoder(self.transform(h)).float() + self.bias.float()  # (c, V)
            seq = batch.seq_ids[start:start + self.chunk_tokens]                  # (c,)
            if self.strategy == "max":
                # The activation is monotone and maps x <= 0 to 0: the max of the activated values
                # is the activation of max(0, max logit), so the (c, V) chunk is only max-pooled
                # here and activated once per sequence below (3x faster on MiniLM's vocabulary).
                pooled.scatter_reduce_(0, seq[:, None].expand_as(logits), logits, "amax",
                                       include_self=True)
            else:
                pooled.index_add_(0, seq, self._activate(logits))
        if self.strategy == "max":
            pooled = self._activate(pooled)                                       # (B, V)
        nz = pooled.nonzero()                                                     # (N, 2), row-major
        return {"indices": nz[:, 1].int(), "values": pooled[nz[:, 0], nz[:, 1]],
                "offsets": offsets_from_counts(segment_counts(nz[:, 0], B))}


    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.log1p(torch.relu(x))
        return torch.log1p(w) if self.activation == "log1p_relu" else w


def build(folder, resolved, processor) -> SpladeHead:
    """The head for the folder's SpladePooling (read by st_layout.py), default max / relu."""
    splade = folder.st.splade or {}
    return SpladeHead(folder.hf_config, splade.get("strategy", "max"), splade.get("activation", "relu"))
