"""PEFT LoRA adapters, merged into the loaded weights once: W += (B @ A) * alpha / r.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (what PEFT's
`save_pretrained` writes). Tensor names are PEFT's: `base_model.model.<HF module>.lora_A.weight`
(r, in) and `...lora_B.weight` (out, r). Each delta (out, in) goes where the checkpoint tensor
`<HF module>.weight` would: through the loader's name mapping, so a q_proj / query delta lands
on its rows of the fused `qkv_proj` / `qkv` (see `packed_modules_mapping` in workers/models).
The sum is done in float32, then cast to the model dtype.

Supported: LoRA on linear layers, `use_rslora` (alpha / sqrt(r)), `fan_in_fan_out`, per-module
ranks (`rank_pattern`, read from the tensors). Refused with a ValueError: DoRA, per-module alphas,
LoRA biases, embedding adapters, `modules_to_save`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .loader import destination, ignored
from .model_folder import ModelFolder

logger = logging.getLogger(__name__)

_PREFIX = "base_model.model."
_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class Adapter:
    path: Path
    base: str                          # base_model_name_or_path ("" when unset)
    deltas: dict[str, torch.Tensor]    # "<HF module>.weight" -> (out, in) float32 delta
    hash: str                          # sha256 of both files, 16 hex digits


def open_adapter(path: str) -> Adapter:
    folder = Path(path).expanduser()
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing (no such folder)"
        raise FileNotFoundError(f"lora={path!r} has no {', no '.join(missing)}; it holds {found}. Pass "
                                "the folder PEFT's save_pretrained wrote")
    raw = [(folder / f).read_bytes() for f in _FILES]
    cfg = json.loads(raw[0])
    _check_config(path, cfg)
    tensors = load_file(str(folder / _FILES[1]))
    deltas = {}
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise ValueError(f"lora={path!r}: tensor {key!r} is not a LoRA A/B weight of a linear "
                                 "layer; only those are supported")
            continue
        module = key.removesuffix(".lora_A.weight")
        a, b = tensors[key].float(), tensors[f"{module}.lora_B.weight"].float()    # (r, in), (out, r)
        r = a.shape[0]  # per-module ranks (rank_pattern) come from the tensors
        scaling = cfg["lora_alpha"] / (r ** 0.5 if cfg.get("use_rslora") else r)
        delta = (b @ a) * scaling                                                    # (out, in)
        deltas[module.removeprefix(_PREFIX) + ".weight"] = delta.T if cfg.get("fan_in_fan_out") else delta
    digest = hashlib.sha256(b"".join(hashlib.sha256(r).digest() for r in raw)).hexdigest()[:16]
    return Adapter(folder, cfg.get("base_model_name_or_path") or "", deltas, digest)


def _check_config(path: str, cfg: dict) -> None:
    refused = {"peft_type != LORA": cfg.get("peft_type", "LORA") != "LORA",
               "use_dora": bool(cfg.get("use_dora")), "alpha_pattern": bool(cfg.get("alpha_pattern")),
               "lora_bias": bool(cfg.get("lora_bias")) or cfg.get("bias", "none") != "none",
               "modules_to_save": bool(cfg.get("modules_to_save"))}
    bad = [k for k, v in refused.items() if v]
    if bad:
        raise ValueError(f"lora={path!r} uses {', '.join(bad)}, which this engine cannot merge; "
                         "merge the adapter with PEFT (merge_and_unload) and save the model instead")


def check_base(adapter: Adapter, folder: ModelFolder) -> None:
    """The adapter's base model must be this folder: its last name component appears in the
    folder's path or the config's `_name_or_path` (case-insensitive). No recorded base: no check."""
    if not adapter.base:
        return
    want = Path(adapter.base).name.lower()
    ours = [p.lower() for p in folder.path.parts]
    ours.append(Path(getattr(folder.hf_config, "_name_or_path", "") or "").name.lower())
    if not any(want and want in name for name in ours):
        raise ValueError(f"LoRA adapter {adapter.path} was trained on {adapter.base!r}, but the model "
                         f"is {folder.path}: pass the adapter's base model, or, if this folder is "
                         "that model under another name, edit base_model_name_or_path in "
                         "adapter_config.json")


def merge(model: nn.Module, adapter: Adapter, folder: ModelFolder) -> int:
    """Add every delta to its weight (or fused rows) in `model`; returns how many were merged.
    A delta for a tensor the model deliberately ignores (an LM head) is skipped with a warning."""
    params = dict(model.named_parameters())
    prefix = getattr(model, "base_model_prefix", "")
    merged = 0
    for name, delta in adapter.deltas.items():
        candidates = [name] + ([f"{prefix}.{name}", name.removeprefix(f"{prefix}.")] if prefix else [])
        found = next(filter(None, (destination(model, params, n) for n in candidates)), None)
        if found is None:
            if ignored(model, params, name):
                logger.warning("LoRA %s: %s targets a weight this model does not use; skipped",
                               adapter.path, name)
                continue
            raise ValueError(f"LoRA adapter {adapter.path} (base {adapter.base or 'unrecorded'!r}) "
                             f"targets {name}, which {folder.path} ({folder.architecture}) does not have")
        target, weight = found
        if weight.shape != delta.shape:
            raise ValueError(f"LoRA adapter {adapter.path} (base {adapter.base or 'unrecorded'!r}) "
                             f"gives {name} a delta of shape {tuple(delta.shape)}, but {folder.path} "
                             f"({folder.architecture}) has {tuple(weight.shape)} there: the adapter "
                             "belongs to another model")
        weight.copy_(weight.float() + delta.to(weight.device))
        merged += 1
    return merged
