"""The LM-head slice of an LLM reranker (Qwen3-Reranker): P("yes") at each sequence's last token.

Only the two rows of the LM head that belong to the answer tokens are loaded (from `lm_head.weight`,
or from `model.embed_tokens.weight` when the folder ties them), never the vocabulary projection:

    logits = h_last @ W[[yes, no]].T                                        (B, H) -> (B, 2)
    score  = softmax([logit_no, logit_yes])[yes]  (= sigmoid(yes - no))     (B, 1) float32
"""
from __future__ import annotations

import torch
from torch import nn

from ..engine.input_builder import PackedBatch


class YesNoHead(nn.Module):
    def __init__(self, cfg, answer_ids: tuple[int, int]):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2, cfg.hidden_size))         # rows: yes, no
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        source = "model.embed_tokens.weight" if tied else "lm_head.weight"
        # checkpoint tensor -> (parameter, rows to take); read by the loader as a slice
        self.checkpoint_rows = {source: ("weight", list(answer_ids))}

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        last = hidden.index_select(0, batch.attn.cu_seqlens[1:].long() - 1)  # (B, H)
        logits = (last @ self.weight.T).float()                              # (B, 2): yes, no
        return logits.softmax(-1)[:, :1]                                     # (B, 1): P(yes)
