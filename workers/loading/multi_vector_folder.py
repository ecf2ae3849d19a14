"""A multi-vector (late-interaction, ColBERT-style) folder's settings, read once from its files.

Two layouts are read, with sentence-transformers 6's meaning:
- `MultiVectorEncoder.save`: modules.json = Transformer -> Dense (token projection, `1_Dense/`)
  -> MultiVectorMask (skip-list) -> Normalize; query/document markers are the `prompts` of
  config_sentence_transformers.json; `query_length`, `document_length` and `query_expansion` in
  sentence_bert_config.json.
- PyLate (v3) ColBERT: modules.json = Transformer -> pylate Dense; `query_prefix` /
  `document_prefix`, lengths, `do_query_expansion`, `attend_to_expansion_tokens` and
  `skiplist_words` in config_sentence_transformers.json; the skip-list defaults to punctuation
  and the vectors are normalized (as MultiVectorEncoder's legacy loader appends them).
A folder with neither is not multi-vector (`read_multi_vector_layout` returns None).
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

# sentence-transformers Dense activation_function -> ours
PROJECTION_ACTIVATIONS = {"torch.nn.modules.linear.Identity": "identity",
                          "torch.nn.modules.activation.Tanh": "tanh"}


@dataclass(frozen=True)
class Projection:
    folder: Path              # the Dense module's folder (config.json + weights, `linear.*`)
    in_features: int
    out_features: int
    bias: bool
    activation: str           # identity | tanh


@dataclass(frozen=True)
class MultiVectorLayout:
    projection: Projection | None
    normalize: bool                              # per-token L2 normalization
    skiplist_words: tuple[str, ...] = ()
    skiplist_tasks: tuple[str, ...] = ("document",)
    prompts: dict[str, str] = field(default_factory=dict)   # "query" / "document" markers
    query_length: int | None = None
    document_length: int | None = None
    expansion: dict | None = None                # strategy, attend, token, length (ST's keys)
    legacy_prefixes: tuple[str, ...] = ()        # PyLate markers registered as special tokens

    def max_length(self, side: str, limit: int) -> int:
        """Tokens per text on a side, as MultiVectorEncoder tokenizes it (at most `limit`)."""
        length = self.query_length if side == "query" else self.document_length
        exp = self.expansion if side == "query" else None
        if exp is not None:
            length = exp["length"] if exp["strategy"] == "fixed" else max(length or limit, exp["length"])
        return min(length or limit, limit)


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def read_multi_vector_layout(path: Path) -> MultiVectorLayout | None:
    modules = _json(path / "modules.json") or []
    st = _json(path / "config_sentence_transformers.json") or {}
    types = [m.get("type", "") for m in modules]
    pylate = any(t.startswith("pylate.") for t in types) or "query_prefix" in st
    native = st.get("model_type") == "MultiVectorEncoder" or any(t.endswith("MultiVectorMask") for t in types)
    if not (pylate or native):
        return None
    projection = next((_projection(path / m.get("path", "")) for m in modules
                       if m.get("type", "").endswith("Dense")), None)
    prompts = dict(st.get("prompts") or {})
    if pylate:
        return _pylate(st, projection, prompts)
    mask = next((_json(path / m.get("path", "") / "config.json") or {} for m in modules
                 if m.get("type", "").endswith("MultiVectorMask")), {})
    if mask.get("keep_only_token_ids"):
        raise ValueError(f"{path}: MultiVectorMask keep_only_token_ids (image-patch documents) is not "
                         "supported; this engine embeds text")
    tasks = mask.get("skiplist_tasks") or ["document"]
    transformer = _json(path / "sentence_bert_config.json") or {}
    normalize = any(t.endswith("Normalize") for t in types)
    return MultiVectorLayout(projection, normalize, tuple(mask.get("skiplist_words") or ()),
                             (tasks,) if isinstance(tasks, str) else tuple(tasks), prompts,
                             transformer.get("query_length"), transformer.get("document_length"),
                             _expansion(transformer.get("query_expansion")))


def _pylate(st: dict, projection: Projection | None, prompts: dict) -> MultiVectorLayout:
    prefixes = {}
    for key, side in (("query_prefix", "query"), ("document_prefix", "document")):
        if st.get(key):
            prefixes[side] = st[key]
            prompts[side] = st[key] + (prompts.get(side) or "").removeprefix(st[key])
    query_length = st.get("query_length")
    expansion = None
    if st.get("do_query_expansion", True):
        attend = st.get("attend_to_expansion_tokens", st.get("attend_to_mask_tokens", False))
        expansion = _expansion({"strategy": "fixed", "attend": bool(attend), "length": query_length or 32})
        query_length = None
    skip = st.get("skiplist_words")
    return MultiVectorLayout(projection, True, tuple(string.punctuation if skip is None else skip),
                             ("document",), prompts, query_length, st.get("document_length"),
                             expansion, tuple(prefixes.values()))


def _expansion(cfg: dict | None) -> dict | None:
    if cfg is None:
        return None
    if cfg.get("strategy") not in ("fixed", "min") or not isinstance(cfg.get("length"), int):
        raise ValueError(f"query_expansion {cfg!r} is not understood: strategy must be 'fixed' or "
                         "'min' and length an integer")
    return {"strategy": cfg["strategy"], "attend": bool(cfg.get("attend", False)),
            "token": cfg.get("token"), "length": cfg["length"]}


def _projection(folder: Path) -> Projection:
    cfg = _json(folder / "config.json") or {}
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in PROJECTION_ACTIVATIONS:
        raise ValueError(f"{folder}: Dense activation_function {act!r} is not supported; supported: "
                         f"{sorted(PROJECTION_ACTIVATIONS)}")
    if "in_features" not in cfg or "out_features" not in cfg:
        raise ValueError(f"{folder}/config.json names no in_features/out_features for the projection")
    return Projection(folder, cfg["in_features"], cfg["out_features"], bool(cfg.get("bias", True)),
                      PROJECTION_ACTIVATIONS[act])
