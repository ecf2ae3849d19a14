"""Weights: safetensors (pickle checkpoints only where the caller allowed them), loaded by
Hugging Face name into our model, with full coverage checks.

Checkpoint names are mapped once: known task prefixes (`bert.`, `roberta.`, `model.`) are
stripped, old LayerNorm names (`gamma`/`beta`) renamed, fused projections filled shard by shard
per the model's `packed_modules_mapping`: `source -> (target, shard)` for equal-size shards
(BERT's q/k/v), or `source -> (target, shard, first_row, rows)` where shard sizes differ (q/k/v
under grouped-query attention); rows are counted along dim 0 of both weight and bias. Loading
fails with the lists of parameters that were never filled and checkpoint tensors that were not
used (unless explicitly ignored).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

_RENAMES = ((".gamma", ".weight"), (".beta", ".bias"))


def _canonical(name: str, model: nn.Module, params: dict[str, nn.Parameter]) -> str:
    for old, new in _RENAMES:
        if name.endswith(old):
            name = name[: -len(old)] + new
    for prefix in getattr(model, "checkpoint_prefixes", ()):
        if name.startswith(prefix) and not _known(name, model, params):
            stripped = name[len(prefix):]
            if _known(stripped, model, params):
                return stripped
    return name


def _known(name: str, model: nn.Module, params) -> bool:
    return name in params or _packed_target(name, model) in params


def _packed_target(name: str, model: nn.Module) -> str | None:
    parts = name.split(".")
    for source, (target, *_) in getattr(model, "packed_modules_mapping", {}).items():
        if source in parts:
            return ".".join(target if p == source else p for p in parts)
    return None


def _copy_into(model: nn.Module, params, name: str, tensor: torch.Tensor) -> str | None:
    """Copy one checkpoint tensor into its parameter; return the parameter name, or None."""
    if name in params:
        param = params[name]
        if param.shape != tensor.shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(param.shape)}: config.json does not match the weights")
        param.data.copy_(tensor)
        return name
    target = _packed_target(name, model)
    if target in params:
        source = next(s for s in model.packed_modules_mapping if s in name.split("."))
        entry = model.packed_modules_mapping[source]
        shard = entry[1]
        start, rows = entry[2:] if len(entry) == 4 else (shard * tensor.shape[0], tensor.shape[0])
        dest = params[target].data[start:start + rows]
        if dest.shape != tensor.shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(dest.shape)}: config.json does not match the weights")
        dest.copy_(tensor)
        return f"{target}#{shard}"
    return None


def _tensors(path: Path):
    """(name, tensor) of one weights file: safetensors lazily, or a pickle checkpoint (only ever
    passed here when the caller allowed pickle) with torch.load(weights_only=True), which
    unpickles tensors and plain containers only, never arbitrary objects."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            for raw in f.keys():
                yield raw, f.get_tensor(raw)
        return
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    yield from ((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))


def load_weights(model: nn.Module, files: list[Path] | tuple[Path, ...]) -> None:
    params = dict(model.named_parameters())
    ignored = getattr(model, "ignored_prefixes", ())
    filled: set[str] = set()
    unexpected: list[str] = []
    for path in files:
        for raw, tensor in _tensors(path):
            name = _canonical(raw, model, params)
            if name.startswith(ignored) or any(f".{p}" in f".{name}" for p in ignored if p.endswith(".")):
                continue
            done = _copy_into(model, params, name, tensor)
            (filled.add(done) if done else unexpected.append(raw))
    expected = set()
    for name in params:
        sources = [s for s, (t, *_) in getattr(model, "packed_modules_mapping", {}).items()
                   if t in name.split(".")]
        expected.update(f"{name}#{model.packed_modules_mapping[s][1]}" for s in sources) if sources \
            else expected.add(name)
    missing = sorted(expected - filled)
    if missing or unexpected:
        raise ValueError(
            f"weights in {files[0].parent} do not match {type(model).__name__}: "
            f"missing {len(missing)} {missing[:8]}, unexpected {len(unexpected)} {unexpected[:8]}. "
            "Check that config.json belongs to these weights")
