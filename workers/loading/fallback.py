"""Which implementation runs a folder (native packed body, or the transformers fallback), and the
workflows the fallback serves.

    implementation="auto"          native when workers/models has the architecture, else transformers
    implementation="native"        the registry's body, or the error listing supported architectures
    implementation="transformers"  the padded transformers body (`hf_model.py`), even for BERT

The fallback keeps the native workflow when the architecture has one for the task (same input
processor, pooler and defaults); otherwise embed gets `transformers_embed` (mean pooling, as
sentence-transformers gives a plain transformers model; last token for a `*ForCausalLM`), and a
`*ForSequenceClassification` folder serves score and classify through transformers' own head;
task="tokens" uses the native token head on transformers' hidden states.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import EngineConfig
from ..engine.input_builder import PackedBatch
from ..heads.activation import ACTIVATIONS, cross_encoder_activation
from ..heads.pooling import cls_pool
from ..models import MODEL_REGISTRY, model_class
from ..workflow import _PAIR, _TEXT, DECODERS, WORKFLOWS, Workflow, dense_pooler, select_workflow
from .hf_model import TransformersModel, native_class_name
from .loader import load_side_weights, materialize
from .model_folder import ModelFolder

logger = logging.getLogger(__name__)


class LogitsHead:
    """transformers' own classification head already ran: read each sequence's first row of
    the repeated (T, labels) logits, then the activation. (T, L) -> (B, L) float32."""

    def __init__(self, activation: str):
        self.activation = ACTIVATIONS[activation]

    def __call__(self, logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.activation(cls_pool(logits, batch))


def logits_head(folder, resolved, processor) -> LogitsHead:
    return LogitsHead(resolved.activation)


_EMBED = Workflow("transformers_embed", "embed", frozenset(), _TEXT, dense_pooler, "vector",
                  causal=False, default_pooling="mean")
FALLBACK_WORKFLOWS: dict[str, Workflow] = {w.name: w for w in (
    _EMBED,
    dataclasses.replace(_EMBED, name="transformers_causal_embed", causal=True, default_pooling="last"),
    Workflow("transformers_cross_encoder", "score", frozenset(), _PAIR, logits_head, "score",
             causal=False, default_pooling="cls", default_activation=cross_encoder_activation),
    Workflow("transformers_classifier", "classify", frozenset(), _TEXT, logits_head, "logits",
             causal=False, default_pooling="cls", default_activation=lambda path, cfg: "identity"),
)}


def implementation(config: EngineConfig, folder: ModelFolder) -> str:
    """"native" or "transformers" for this folder (see the module doc)."""
    if config.implementation == "native":
        model_class(folder.architecture)  # raises, listing the supported architectures
        return "native"
    if config.implementation == "auto" and folder.architecture in MODEL_REGISTRY:
        return "native"
    return "transformers"


def fallback_workflow(config: EngineConfig, folder: ModelFolder) -> Workflow:
    """The workflow the transformers fallback runs for (architecture, task)."""
    arch = folder.architecture
    if arch.endswith("ForSequenceClassification"):
        if config.task == "embed":
            raise ValueError(f"{arch} is a sequence classifier: use task='score' or 'classify'")
        return FALLBACK_WORKFLOWS[f"transformers_{'cross_encoder' if config.task == 'score' else 'classifier'}"]
    if config.task == "tokens":  # the token head reads (T, hidden) states, whoever computed them
        return WORKFLOWS["token_embed"]
    if config.task != "embed":
        raise ValueError(f"architecture {arch!r} with task={config.task!r} is not supported by the "
                         "transformers fallback, which serves embed and tokens, and score/classify "
                         "with a *ForSequenceClassification folder; use implementation='native' for "
                         f"{config.task!r}")
    bidirectional = config.enable_bidirectional
    if arch in DECODERS and (bidirectional or (bidirectional is None and folder.declared_bidirectional)):
        raise ValueError(f"{folder.path} asks for bidirectional attention (enable_bidirectional or "
                         f"the folder's config), but transformers runs {arch} causally; use "
                         "implementation='native' (or 'auto') for bidirectional decoders")
    if any(arch in w.architectures for w in WORKFLOWS.values() if w.task == "embed"):
        return select_workflow(arch, "embed", None if arch not in DECODERS else False)
    return FALLBACK_WORKFLOWS["transformers_causal_embed" if arch.endswith("ForCausalLM") else
                              "transformers_embed"]


def fallback_body(folder: ModelFolder, workflow: Workflow, device, dtype) -> TransformersModel:
    """transformers' model for the folder, loaded; logs the one warning that packing is off."""
    name = native_class_name(folder)
    logger.warning("%s runs through transformers, not a native packed body: padded, length-sorted "
                   "batches, packing is off (expect it slower than a native architecture)", name)
    body = TransformersModel(folder, workflow.head is logits_head, dtype, device)
    return body.eval().requires_grad_(False)


def fallback_head(folder: ModelFolder, head, device, dtype):
    """The workflow's head, materialized; a sentence-transformers Dense stack gets its weights
    (parameters named `<module folder>.linear.*`, as in pooling.py)."""
    if not isinstance(head, nn.Module):
        return head
    head = materialize(head, device, dtype)
    side = getattr(head, "side_weights", None)
    if side:
        load_side_weights(head, side)
        return head.eval().requires_grad_(False)
    state = {}
    for spec in folder.st_dense:
        tensors = load_file(str(folder.path / spec["path"] / "model.safetensors"))
        state.update({f"{spec['path'].replace('.', '_')}.{k}": v for k, v in tensors.items()})
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)
