"""A sentence-transformers folder read as the library reads it, or refused by name.

One reader for every task (embed, score, classify, sparse, tokens, bge-m3) and every layout
sentence-transformers 2.x-6.x writes: `modules.json` (old `sentence_transformers.models.X` and
new `sentence_transformers.<package>.modules.<file>.X` type names), each module's config
(Pooling as `pooling_mode_*` booleans or a `pooling_mode` string or list; Dense; Normalize;
SpladePooling; the Transformer's `sentence_bert_config.json`), and
`config_sentence_transformers.json` (kind, prompts). A module type, mode, activation or config
key that would change the output and that the engine does not implement raises
`UnsupportedLayoutError` naming it, the file it came from and what is supported: nothing is
skipped. Multi-vector folders' own keys are read by `multi_vector_folder.py`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("SentenceTransformer", "CrossEncoder", "SparseEncoder", "MultiVectorEncoder")
# The tasks a folder of each kind serves (None: a plain transformers folder, the architecture decides).
KIND_TASKS = {"SentenceTransformer": ("embed", "tokens", "bge-m3", "chunks"),
              "CrossEncoder": ("score", "classify"), "SparseEncoder": ("sparse",),
              "MultiVectorEncoder": ("tokens",)}
# sentence-transformers pooling modes -> the engine's pooler names (pooling.POOLERS)
POOLING_MODES = {"cls": "cls", "max": "max", "mean": "mean",
                 "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean": "weightedmean",
                 "lasttoken": "last"}
# Legacy boolean keys, in the order sentence-transformers concatenates their vectors.
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean",
                   "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Dense activation_function (a torch.nn class path) the dense pooler implements (pooling.py).
DENSE_ACTIVATIONS = ("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh",
                     "torch.nn.modules.activation.ReLU", "torch.nn.modules.activation.GELU",
                     "torch.nn.modules.activation.Sigmoid", "torch.nn.modules.activation.SiLU")
_TASK_OUTPUTS = {"feature-extraction": "last_hidden_state", "sequence-classification": "logits",
                 "fill-mask": "logits"}
_TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json",
                        "sentence_distilbert_config.json", "sentence_camembert_config.json",
                        "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                        "sentence_xlnet_config.json")
# Loading options that never change the numbers (device, dtype, hub access, attention kernel).
_HARMLESS_KWARGS = {"torch_dtype", "dtype", "attn_implementation", "revision", "token", "cache_dir",
                    "local_files_only", "trust_remote_code", "device_map", "low_cpu_mem_usage",
                    "use_fast", "subfolder"}


class UnsupportedLayoutError(ValueError):
    """The folder asks for something that would change the output and that the engine does not do."""


@dataclass(frozen=True)
class Transformer:
    task: str = "feature-extraction"     # sentence-transformers' transformer_task
    max_seq_length: int | None = None    # the module's own length (old configs / processor kwargs)
    lowercase: bool = False              # do_lower_case: the tokenizer must lowercase already


@dataclass(frozen=True)
class Pooling:
    modes: tuple[str, ...]               # engine pooler names, concatenated in this order
    include_prompt: bool = True

    @property
    def name(self) -> str:
        return "+".join(self.modes)


@dataclass(frozen=True)
class Layout:
    """What a folder's sentence-transformers files say (all defaults: a plain folder)."""

    kind: str | None = None
    transformer: Transformer = Transformer()
    pooling: Pooling | None = None
    # After pooling, in modules.json order: ("dense", spec dict) or ("normalize", None).
    post: tuple[tuple[str, dict | None], ...] = ()
    splade: dict | None = None            # SpladePooling: strategy, activation
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    writer_version: str | None = None     # the sentence-transformers version that saved it

    @property
    def dense(self) -> tuple[dict, ...]:
        return tuple(spec for op, spec in self.post if op == "dense")

    @property
    def normalize(self) -> bool:
        return any(op == "normalize" for op, _ in self.post)

    def tasks(self) -> tuple[str, ...] | None:
        return KIND_TASKS.get(self.kind)


def read_layout(path: Path) -> Layout:
    """Read `path`'s sentence-transformers files (a folder without modules.json is plain)."""
    modules = _json(path / "modules.json")
    st = _json(path / "config_sentence_transformers.json") or {}
    if modules is None:
        return Layout()
    if not isinstance(modules, list):
        raise UnsupportedLayoutError(f"{path / 'modules.json'} is not a list of modules")
    parts: dict = {"post": [], "transformer": None, "pooling": None, "splade": None}
    types = []
    for module in modules:
        kind = module.get("type", "")
        types.append(kind)
        reader = _READERS.get(_class_name(kind))
        if reader is None:
            raise UnsupportedLayoutError(
                f"{path / 'modules.json'} names module {kind!r} ({module.get('path') or 'the root'}), "
                f"which this engine does not implement; it would change the output, so the folder is "
                f"refused. Modules read: {', '.join(sorted(_READERS))} (sentence_transformers.*"
                ", or pylate Dense in a multi-vector folder)")
        reader(path, module, parts)
    if parts["transformer"] is None:
        raise UnsupportedLayoutError(f"{path / 'modules.json'} names no Transformer module first; "
                                     "this engine reads folders whose first module is a Transformer")
    return Layout(kind=_kind(path, st, types, parts), transformer=parts["transformer"],
                  pooling=parts["pooling"], post=tuple(parts["post"]), splade=parts["splade"],
                  prompts=dict(st.get("prompts") or {}),
                  default_prompt_name=st.get("default_prompt_name"),
                  writer_version=(st.get("__version__") or {}).get("sentence_transformers"))


def _class_name(kind: str) -> str:
    """`sentence_transformers.[...].X` (old or new package path) or `pylate.models.Dense.Dense`
    -> X; anything else (a module of the folder's own code) -> ''."""
    if kind.startswith("sentence_transformers.") or kind == "pylate.models.Dense.Dense":
        return kind.rsplit(".", 1)[-1]
    return ""


def _kind(path: Path, st: dict, types: list[str], parts: dict) -> str:
    declared = st.get("model_type")
    if declared is not None:
        if declared not in KINDS:
            raise UnsupportedLayoutError(f"{path / 'config_sentence_transformers.json'} says model_type "
                                         f"{declared!r}; this engine reads {list(KINDS)}")
        return declared
    names = {_class_name(t) for t in types}
    if parts["splade"] is not None or "MLMTransformer" in names:
        return "SparseEncoder"
    if "MultiVectorMask" in names or any(t.startswith("pylate.") for t in types) or "query_prefix" in st:
        return "MultiVectorEncoder"
    if parts["transformer"].task == "sequence-classification":
        return "CrossEncoder"
    return "SentenceTransformer"


def _module_config(path: Path, module: dict, names=("config.json",)) -> tuple[Path, dict]:
    folder = path / module.get("path", "")
    for name in names:
        if (folder / name).is_file():
            return folder / name, _json(folder / name) or {}
    return folder / names[0], {}


def _check_keys(file: Path, cfg: dict, known: set[str]) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UnsupportedLayoutError(f"{file} has key(s) {unknown} this engine does not read; "
                                     f"it reads {sorted(known)}")


def _transformer(path: Path, module: dict, parts: dict) -> None:
    if parts["transformer"] is not None or module.get("idx", 0) not in (0, None):
        raise UnsupportedLayoutError(f"{path / 'modules.json'}: the Transformer must be the first "
                                     "and only input module")
    if module.get("path", "") not in ("", "."):
        raise UnsupportedLayoutError(
            f"{path / 'modules.json'} keeps its Transformer in the subfolder {module['path']!r} "
            "(an old layout); this engine reads the transformer from the folder's root: move "
            f"{module['path']}/* up into {path} (or pass that subfolder, losing the pooling config)")
    file, cfg = _module_config(path, module, _TRANSFORMER_CONFIGS)
    task = cfg.get("transformer_task", "fill-mask" if module["type"].endswith("MLMTransformer")
                   else "feature-extraction")
    if task not in _TASK_OUTPUTS:
        raise UnsupportedLayoutError(f"{file}: transformer_task {task!r} is not served; this engine "
                                     f"reads {sorted(_TASK_OUTPUTS)}")
    for name, spec in (cfg.get("modality_config") or {}).items():
        if name != "text" or spec.get("method", "forward") != "forward" \
                or spec.get("method_output_name", _TASK_OUTPUTS[task]) != _TASK_OUTPUTS[task]:
            raise UnsupportedLayoutError(f"{file}: modality_config {name!r}: {spec} is not the text "
                                         f"forward -> {_TASK_OUTPUTS[task]} this engine runs")
    if cfg.get("processing_kwargs"):
        raise UnsupportedLayoutError(f"{file}: processing_kwargs {cfg['processing_kwargs']} would "
                                     "change the tokenized input; this engine does not apply them")
    processor = {**(cfg.get("tokenizer_args") or {}), **(cfg.get("processor_kwargs") or {})}
    for key in ("model_args", "model_kwargs", "config_args", "config_kwargs"):
        _check_keys(file, {f"{key}.{k}": v for k, v in (cfg.get(key) or {}).items()},
                    {f"{key}.{k}" for k in _HARMLESS_KWARGS})
    _check_keys(file, {f"processor_kwargs.{k}": v for k, v in processor.items()},
                {f"processor_kwargs.{k}" for k in _HARMLESS_KWARGS | {"model_max_length"}})
    length = cfg.get("max_seq_length") or processor.get("model_max_length")
    parts["transformer"] = Transformer(task, int(length) if length else None,
                                       bool(cfg.get("do_lower_case", False)))


def _pooling(path: Path, module: dict, parts: dict) -> None:
    file, cfg = _module_config(path, module)
    if parts["pooling"] is not None or parts["post"]:
        raise UnsupportedLayoutError(f"{file}: a Pooling module after Dense/Normalize or a second "
                                     "Pooling is not supported")
    _check_keys(file, cfg, {"embedding_dimension", "word_embedding_dimension", "pooling_mode",
                            "include_prompt", *_LEGACY_POOLING})
    modes = cfg.get("pooling_mode")
    if modes is None:  # the legacy booleans; none set means mean, as sentence-transformers reads it
        modes = [mode for key, mode in _LEGACY_POOLING.items() if cfg.get(key)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise UnsupportedLayoutError(f"{file}: pooling mode {mode!r} is not supported; "
                                         f"supported: {sorted(POOLING_MODES)}")
    parts["pooling"] = Pooling(tuple(POOLING_MODES[m] for m in modes),
                               bool(cfg.get("include_prompt", True)))


def _dense(path: Path, module: dict, parts: dict) -> None:
    file, cfg = _module_config(path, module)
    if not cfg:
        raise UnsupportedLayoutError(f"modules.json of {path} names a Dense module in "
                                     f"{module.get('path')!r}, which has no config.json")
    _check_keys(file, cfg, {"in_features", "out_features", "bias", "activation_function",
                            "module_input_name", "module_output_name", "use_residual"})
    if parts["pooling"] is None and cfg.get("module_input_name", "token_embeddings") == "token_embeddings":
        parts["token_dense"] = True   # a multi-vector projection (multi_vector_folder reads it)
        return
    if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise UnsupportedLayoutError(f"{file}: Dense on {cfg['module_input_name']!r} is not supported "
                                     "after pooling; this engine applies Dense to sentence_embedding")
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if not act.startswith("torch."):
        raise UnsupportedLayoutError(f"{file}: activation_function {act!r} is custom code (without "
                                     "trust_remote_code sentence-transformers would replace it by Tanh); "
                                     f"this engine refuses it. Supported: {list(DENSE_ACTIVATIONS)}")
    if act not in DENSE_ACTIVATIONS:
        raise UnsupportedLayoutError(f"{file}: activation_function {act!r} is not supported; "
                                     f"supported: {list(DENSE_ACTIVATIONS)}")
    parts["post"].append(("dense", dict(
        path=module["path"], in_features=cfg["in_features"], out_features=cfg["out_features"],
        bias=cfg.get("bias", True), activation=act, residual=bool(cfg.get("use_residual", False)))))


def _normalize(path: Path, module: dict, parts: dict) -> None:
    file, cfg = _module_config(path, module)
    if parts["pooling"] is None and parts.get("token_dense"):
        return  # a multi-vector folder's per-token normalization (multi_vector_folder reads it)
    if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise UnsupportedLayoutError(f"{file}: Normalize on {cfg['module_input_name']!r} is not "
                                     "supported; this engine normalizes sentence_embedding")
    parts["post"].append(("normalize", None))


def _splade(path: Path, module: dict, parts: dict) -> None:
    file, cfg = _module_config(path, module)
    _check_keys(file, cfg, {"pooling_strategy", "activation_function", "embedding_dimension",
                            "word_embedding_dimension", "chunk_size"})
    strategy, act = cfg.get("pooling_strategy", "max"), cfg.get("activation_function", "relu")
    if strategy not in ("max", "sum") or act not in ("relu", "log1p_relu"):
        raise UnsupportedLayoutError(f"{file}: SpladePooling pooling_strategy={strategy!r} "
                                     f"activation_function={act!r}; supported: max | sum and "
                                     "relu | log1p_relu")
    parts["splade"] = {"strategy": strategy, "activation": act,
                       "dimension": cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))}


def _multi_vector_mask(path: Path, module: dict, parts: dict) -> None:
    """Read by multi_vector_folder.py (skip-list, task sides); accepted here."""


def _dropout(path: Path, module: dict, parts: dict) -> None:
    """Dropout is the identity at inference."""


_READERS = {"Transformer": _transformer, "MLMTransformer": _transformer, "Pooling": _pooling,
            "Dense": _dense, "Normalize": _normalize, "SpladePooling": _splade,
            "MultiVectorMask": _multi_vector_mask, "Dropout": _dropout}


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None
