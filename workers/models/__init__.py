"""Model registry: the HF `architectures` string -> our packed-token implementation."""
from __future__ import annotations

from torch import nn

from .bert import BertModel
from .decoder import DecoderModel
from .distilbert import DistilBertModel
from .gemma3 import Gemma3TextModel
from .modernbert import ModernBertModel
from .mpnet import MPNetModel

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "BertModel": BertModel,
    "BertForMaskedLM": BertModel,
    "RobertaModel": BertModel,
    "RobertaForMaskedLM": BertModel,
    "XLMRobertaModel": BertModel,
    "XLMRobertaForMaskedLM": BertModel,
    "MPNetModel": MPNetModel,
    "MPNetForMaskedLM": MPNetModel,
    "DistilBertModel": DistilBertModel,
    "DistilBertForMaskedLM": DistilBertModel,
    "ModernBertModel": ModernBertModel,
    "ModernBertForMaskedLM": ModernBertModel,
    # Sequence classifiers: the body here; the head is the workflow's (workers/heads/classifier_head.py).
    **{f"{family}ForSequenceClassification": BertModel for family in ("Bert", "Roberta", "XLMRoberta")},
    # Decoders: the *ForCausalLM checkpoints load without their LM head.
    **{f"{family}{suffix}": DecoderModel for family in ("Qwen2", "Qwen3", "Llama", "Mistral")
       for suffix in ("Model", "ForCausalLM")},
    # EmbeddingGemma: Gemma3 text run bidirectionally.
    "Gemma3TextModel": Gemma3TextModel,
}


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in MODEL_REGISTRY:
        raise ValueError(f"architecture {architecture!r} is not supported; supported: "
                         f"{sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[architecture]
