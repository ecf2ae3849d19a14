"""Activations on a head's logits (score and classify), and the folder's default.

The default for a cross-encoder is what sentence-transformers 6's `CrossEncoder.predict` applies:
the `activation_fn` saved in config_sentence_transformers.json (read only in a folder with a
modules.json, i.e. one CrossEncoder.save wrote, as sentence-transformers does), else config.json's
`sentence_transformers.activation_fn`, else its legacy `sbert_ce_default_activation_function`
(each honoured only when it is a `torch.*` class, as CrossEncoder does without
trust_remote_code), else sigmoid for one label and identity for more.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "identity": lambda x: x,
}
# sentence-transformers saves the class's dotted path; the class name is what matters.
_TORCH_CLASSES = {"Sigmoid": "sigmoid", "Softmax": "softmax", "Identity": "identity"}


def cross_encoder_activation(path: Path, hf_config) -> str:
    """The activation CrossEncoder.predict would apply to this folder (see module doc)."""
    st = (_read_json(path / "config_sentence_transformers.json") or {}) if (path / "modules.json").is_file() else {}
    saved = [st.get("activation_fn"),
             (getattr(hf_config, "sentence_transformers", None) or {}).get("activation_fn"),
             getattr(hf_config, "sbert_ce_default_activation_function", None)]
    for dotted in filter(None, saved):
        if not dotted.startswith("torch."):
            logger.warning("%s names activation %r, which CrossEncoder ignores without "
                           "trust_remote_code; skipped", path, dotted)
            continue
        name = _TORCH_CLASSES.get(dotted.rsplit(".", 1)[-1])
        if name is None:
            raise ValueError(f"{path} names activation {dotted!r}, which is not supported; pass "
                             f"activation= one of {sorted(ACTIVATIONS)}")
        return name
    return "sigmoid" if hf_config.num_labels == 1 else "identity"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
