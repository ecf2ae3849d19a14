"""Sequence-classification heads: the logits of BERT/RoBERTa-family `*ForSequenceClassification`.

Both read the first token of each sequence ([CLS] / <s>) and keep the Hugging Face parameter
names, so the head loads from the same checkpoint as the body:

    BERT:     logits = classifier(tanh(pooler.dense(h_cls)))                   (B, H) -> (B, L)
    RoBERTa:  logits = classifier.out_proj(tanh(classifier.dense(h_cls)))       (B, H) -> (B, L)

then the activation (sigmoid, softmax or identity; see `activation.py`), in float32. Used by the
cross-encoder (score) and classifier (classify) workflows; picked by architecture from
`CLASSIFIER_HEADS`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..engine.input_builder import PackedBatch


class _Dense(nn.Module):
    """Holds one `dense` linear layer, so its parameters carry the HF name `<owner>.dense.*`."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _RobertaClassifier(nn.Module):
    def __init__(self, hidden: int, labels: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, labels)


class SequenceClassificationHead(nn.Module):
    """Shared forward: first token of each sequence -> `logits` -> activation, float32 (B, L)."""

    checkpoint_prefixes = ("bert.", "roberta.")

    def __init__(self, cfg, activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.num_labels = cfg.num_labels
        self.activation = activation

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        first = hidden.index_select(0, batch.attn.cu_seqlens[:-1].long())   # (B, H)
        return self.activation(self.logits(first).float())                   # (B, L)

    def logits(self, first: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BertClassifierHead(SequenceClassificationHead):
    def __init__(self, cfg, activation):
        super().__init__(cfg, activation)
        self.pooler = _Dense(cfg.hidden_size, cfg.hidden_size)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def logits(self, first):
        return self.classifier(torch.tanh(self.pooler.dense(first)))


class RobertaClassifierHead(SequenceClassificationHead):
    def __init__(self, cfg, activation):
        super().__init__(cfg, activation)
        self.classifier = _RobertaClassifier(cfg.hidden_size, cfg.num_labels)

    def logits(self, first):
        c = self.classifier
        return c.out_proj(torch.tanh(c.dense(first)))


CLASSIFIER_HEADS: dict[str, type[SequenceClassificationHead]] = {
    "BertForSequenceClassification": BertClassifierHead,
    "RobertaForSequenceClassification": RobertaClassifierHead,
    "XLMRobertaForSequenceClassification": RobertaClassifierHead,
}


def labels_of(cfg) -> list[str]:
    """Label names in id order, from config.json's id2label (LABEL_i where it names none)."""
    id2label = {int(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(cfg.num_labels)]
