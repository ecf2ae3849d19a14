"""Weights: safetensors (pickle checkpoints only where the caller allowed them), loaded by
Hugging Face name into our modules (a model body and its head), with full coverage checks.

Checkpoint names are mapped once per module: known task prefixes (`bert.`, `roberta.`, `model.`)
are stripped, old LayerNorm names (`gamma`/`beta`) renamed, fused projections filled shard by
shard per the module's `packed_modules_mapping`: `source -> (target, shard)` for equal-size shards
(BERT's q/k/v), or `source -> (target, shard, first_row, rows)` where shard sizes differ (q/k/v
under grouped-query attention); rows are counted along dim 0 of both weight and bias. A module's
`checkpoint_rows` (`checkpoint name -> (parameter, rows)`) takes only those rows of a tensor, read
as a slice (an LLM reranker's two LM-head rows). One checkpoint tensor may fill several modules.
Tensors are read only when a module takes them. Loading fails with the lists of parameters that
were never filled and checkpoint tensors that were not used (unless explicitly ignored).
A weights file in a subfolder of the model folder (a sentence-transformers module such as
`2_Dense/model.safetensors`) has its tensor names prefixed with the subfolder's name
(`2_Dense.linear.weight`), so two Dense modules' `linear.weight` stay apart.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from safetensors import safe_open
from torch import nn

_RENAMES = ((".gamma", ".weight"), (".beta", ".bias"))

# `torch.nn.init` functions modules call from `reset_parameters`. On the meta device they compute
# nothing, but the first `normal_` imports torch._dynamo (1.7-2.8 s measured on a 2-core CPU),
# which is most of a worker's model start-up; the loader fills every parameter anyway.
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                   "orthogonal_")


@contextlib.contextmanager
def meta_modules() -> Iterator[None]:
    """Build modules on the meta device without running their weight initialisers (the loader
    fills every parameter and checks that none is left). Not thread-safe: it swaps
    `torch.nn.init` functions for no-ops while the block runs."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    for name in saved:
        setattr(nn.init, name, _no_init)
    try:
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _no_init(tensor, *args, **kwargs):
    return tensor


def materialize(module: nn.Module, device, dtype) -> nn.Module:
    """`module.to_empty(device=device).to(dtype)`, without the import it costs: `to_empty` calls
    `torch.empty_like` on each meta tensor, whose Python reference imports sympy to work out the
    strides (0.3-0.6 s of CPU on a 2-core machine, once per process: in every engine actor's
    start-up). Modules built under `meta_modules` hold contiguous tensors, so an empty tensor of
    the same shape is the same thing. (`_apply` is what `to_empty` itself uses.)"""
    return module._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device)).to(dtype)


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


def _ignored(name: str, model: nn.Module) -> bool:
    ignored = getattr(model, "ignored_prefixes", ())
    return name.startswith(ignored) or any(f".{p}" in f".{name}" for p in ignored if p.endswith("."))


def _packed_target(name: str, model: nn.Module) -> str | None:
    parts = name.split(".")
    for source, (target, *_) in getattr(model, "packed_modules_mapping", {}).items():
        if source in parts:
            return ".".join(target if p == source else p for p in parts)
    return None


def _check_shape(name: str, got: torch.Size, want: torch.Size) -> None:
    if got != want:
        raise ValueError(f"checkpoint tensor {name} has shape {tuple(got)}, the model expects "
                         f"{tuple(want)}: config.json does not match the weights")


def _copy_into(model: nn.Module, params, name: str, tensor: torch.Tensor) -> str:
    """Copy one checkpoint tensor into its (known) parameter; return the parameter's key."""
    if name in params:
        _check_shape(name, tensor.shape, params[name].shape)
        params[name].data.copy_(tensor)
        return name
    target = _packed_target(name, model)
    source = next(s for s in model.packed_modules_mapping if s in name.split("."))
    entry = model.packed_modules_mapping[source]
    shard = entry[1]
    start, rows = entry[2:] if len(entry) == 4 else (shard * tensor.shape[0], tensor.shape[0])
    dest = params[target].data[start:start + rows]
    _check_shape(name, tensor.shape, dest.shape)
    dest.copy_(tensor)
    return f"{target}#{shard}"


def destination(model: nn.Module, params, name: str) -> tuple[str, torch.Tensor] | None:
    """Where checkpoint tensor `name` would go: (canonical name, the parameter or its fused rows),
    None when the module has no such parameter. Used to merge LoRA deltas (`workers/loading/lora.py`)."""
    name = _canonical(name, model, params)
    if name in params:
        return name, params[name].data
    target = _packed_target(name, model)
    if target not in params:
        return None
    mapping = model.packed_modules_mapping
    entry = mapping[next(s for s in mapping if s in name.split("."))]
    shards = sum(1 for e in mapping.values() if e[0] == entry[0])
    rows = params[target].shape[0] // shards
    start, rows = entry[2:] if len(entry) == 4 else (entry[1] * rows, rows)
    return name, params[target].data[start:start + rows]


def ignored(model: nn.Module, params, name: str) -> bool:
    """A checkpoint tensor the module deliberately does not use (an LM head, a pooler)."""
    return _ignored(_canonical(name, model, params), model)


Reader = Callable[[Sequence[int] | None], torch.Tensor]


def _tensors(path: Path, prefix: str = "") -> Iterator[tuple[str, Reader]]:
    for name, read in _file_tensors(path):
        yield prefix + name, read


def _file_tensors(path: Path) -> Iterator[tuple[str, Reader]]:
    """(name, read) of one weights file; `read(rows)` loads the tensor (or only `rows` of it):
    safetensors lazily, or a pickle checkpoint (only ever passed here when the caller allowed
    pickle) with torch.load(weights_only=True), which unpickles tensors and plain containers
    only, never arbitrary objects."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            for raw in f.keys():
                def read(rows=None, raw=raw):
                    if rows is None:
                        return f.get_tensor(raw)
                    part = f.get_slice(raw)
                    return torch.cat([part[r:r + 1] for r in rows])
                yield raw, read
        return
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            yield k, (lambda rows=None, v=v: v if rows is None else v[list(rows)])


def _expected(model: nn.Module, params) -> set[str]:
    expected = set()
    mapping = getattr(model, "packed_modules_mapping", {})
    for name in params:
        sources = [s for s, (t, *_) in mapping.items() if t in name.split(".")]
        expected.update(f"{name}#{mapping[s][1]}" for s in sources) if sources else expected.add(name)
    return expected


def load_side_weights(head: nn.Module, files: dict[str, Path]) -> None:
    """Fill a head from its own files (`submodule name -> file`; "" is the whole head), each
    with the same coverage checks as the model's checkpoint."""
    for name, path in files.items():
        load_weights(head.get_submodule(name), [path])


def load_weights(modules: nn.Module | Sequence[nn.Module], files: list[Path] | tuple[Path, ...]) -> None:
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    states = [(m, dict(m.named_parameters()), set()) for m in modules]
    unexpected: list[str] = []
    root = min((Path(f).parent for f in files), key=lambda p: len(p.parts), default=None)
    for path in files:
        sub = Path(path).parent.relative_to(root) if root is not None else Path()
        prefix = "" if sub == Path() else ".".join(sub.parts) + "."
        for raw, read in _tensors(path, prefix):
            taken, tensor = False, None
            for model, params, filled in states:
                rows = getattr(model, "checkpoint_rows", {}).get(raw)
                if rows is not None:
                    target, ids = rows
                    part = read(ids)
                    _check_shape(raw, part.shape, params[target].shape)
                    params[target].data.copy_(part)
                    filled.add(target)
                    taken = True
                    continue
                name = _canonical(raw, model, params)
                if _known(name, model, params):
                    tensor = read() if tensor is None else tensor
                    filled.add(_copy_into(model, params, name, tensor))
                    taken = True
            if not taken and not any(_ignored(_canonical(raw, m, p), m) for m, p, _ in states):
                unexpected.append(raw)
    # The body's names as they are; a head's prefixed with its class (a head's may be bare "weight").
    missing = sorted(f"{'' if i == 0 else type(m).__name__ + '.'}{n}"
                     for i, (m, params, filled) in enumerate(states) for n in _expected(m, params) - filled)
    if missing or unexpected:
        names = " + ".join(type(m).__name__ for m in modules)
        raise ValueError(
            f"weights in {files[0].parent} do not match {names}: "
            f"missing {len(missing)} {missing[:8]}, unexpected {len(unexpected)} {unexpected[:8]}. "
            "Check that config.json belongs to these weights")
