"""Start-up resolution: the runtime values derived from the config, the model folder, the
workflow and the machine (max length, pooling, normalize, activation, token budget, prompt).

Values the user left as None come from the folder (sentence-transformers or LLM2Vec files, the
HF config) or the workflow's defaults; every conflict is a ValueError that names the fix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DEFAULT_CPU_BATCHED_TOKENS, DEFAULT_GPU_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, EngineConfig
from ..heads.pooling import POOLERS
from ..workflow import Workflow
from .model_folder import ModelFolder, open_model_folder
from .multi_vector_folder import read_multi_vector_layout


@dataclass(frozen=True)
class Resolved:
    """The runtime values derived from the config, the model folder and the machine."""

    device: torch.device
    dtype: torch.dtype
    max_length: int
    pooling: str
    normalize: bool
    dimensions: int | None
    max_num_batched_tokens: int
    max_num_seqs: int
    prompt: str = ""
    skip_instruction: bool = False
    activation: str | None = None   # score/classify heads: sigmoid | softmax | identity


def resolve(config: EngineConfig, folder: ModelFolder, model_limit: int, workflow: Workflow,
            device, dtype) -> Resolved:
    limit = model_limit
    llm2vec = folder.llm2vec or {}
    max_length = config.max_length or default_max_length(folder, limit)
    if max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds what {folder.architecture} at "
                         f"{folder.path} supports ({limit} positions); lower max_length")
    default_budget = DEFAULT_GPU_BATCHED_TOKENS if device.type == "cuda" else DEFAULT_CPU_BATCHED_TOKENS
    budget = config.max_num_batched_tokens or max(default_budget, max_length)
    if budget < max_length:
        raise ValueError(f"max_num_batched_tokens={budget} is below max_length={max_length}: one "
                         "text must fit in a batch; raise the budget or lower max_length")
    common = dict(device=device, dtype=dtype, max_length=max_length, max_num_batched_tokens=budget,
                  max_num_seqs=config.max_num_seqs or DEFAULT_MAX_NUM_SEQS)
    if workflow.output not in ("vector", "chunks"):  # chunks: vectors per chunk
        return Resolved(pooling=workflow.default_pooling, normalize=False, dimensions=None,
                        prompt=_task_prompt(config, workflow),
                        activation=_activation(config, folder, workflow), **common)
    pooling = config.pooling or folder.st_pooling or llm2vec.get("pooling") or workflow.default_pooling
    if any(mode not in POOLERS for mode in pooling.split("+")):
        raise ValueError(f"{folder.path} asks for pooling {pooling!r}, which is not supported; "
                         f"pass pooling= one of {sorted(POOLERS)}")
    normalize = folder.st_normalize if config.normalize is None else config.normalize
    width = folder.st_dense[-1]["out_features"] if folder.st_dense \
        else folder.hf_config.hidden_size * len(pooling.split("+"))
    if config.dimensions is not None and config.dimensions > width:
        raise ValueError(f"dimensions={config.dimensions} exceeds the model's output width {width}")
    return Resolved(pooling=pooling, normalize=normalize, dimensions=config.dimensions,
                    prompt=_prompt(config, folder),
                    skip_instruction=_skip_instruction(config, folder, pooling), **common)


def default_max_length(folder: ModelFolder, limit: int) -> int:
    """Tokens per text when the user sets none, with sentence-transformers' precedence: the
    Transformer module's own length (an old `max_seq_length`, or its processor kwargs), else
    LLM2Vec's, else the tokenizer's `model_max_length`; each capped by the model's positions."""
    llm2vec = folder.llm2vec or {}
    return min(folder.st_max_length or llm2vec.get("max_length") or folder.tokenizer_max_length
               or limit, limit)


def _task_prompt(config: EngineConfig, workflow: Workflow) -> str:
    """score/classify: the prompt is prepended to a classified text, or is an LLM reranker's
    instruction (its input processor reads config.prompt); a cross-encoder has no place for it."""
    if config.prompt is not None and workflow.name == "cross_encoder":
        raise ValueError(f"prompt={config.prompt!r} has no place in a cross-encoder's (query, "
                         "document) pair; put it into the query text, or drop prompt")
    return "" if workflow.name == "llm_reranker" else (config.prompt or "")


def _activation(config: EngineConfig, folder: ModelFolder, workflow: Workflow) -> str | None:
    if workflow.default_activation is None:  # the LLM reranker: its score is P(yes)
        if config.activation is not None:
            raise ValueError(f"activation={config.activation!r} does not apply to the {workflow.name} "
                             "workflow, whose score is the softmax probability of 'yes'; drop it")
        return None
    labels = folder.hf_config.num_labels
    if workflow.output == "score" and labels != 1:
        raise ValueError(f"{folder.path} has {labels} labels, but task='score' returns one score per "
                         "pair from a single-label cross-encoder; use task='classify' for its logits")
    return config.activation or workflow.default_activation(folder.path, folder.hf_config)


def _prompt(config: EngineConfig, folder: ModelFolder) -> str:
    """config.prompt, else the folder's sentence-transformers prompt by name (or its default)."""
    if config.prompt is not None:
        return config.prompt
    name = config.prompt_name or folder.st_default_prompt_name
    if name is None:
        return ""
    if name not in folder.st_prompts:
        raise ValueError(f"prompt_name={name!r} is not among the prompts of {folder.path} "
                         f"({sorted(folder.st_prompts) or 'none'}, from config_sentence_transformers"
                         ".json); pass one of them, or the text itself as prompt=")
    return folder.st_prompts[name]


def _skip_instruction(config: EngineConfig, folder: ModelFolder, pooling: str) -> bool:
    """config.skip_instruction, else the folder's: sentence-transformers `include_prompt: false`
    (every pooling mode but last-token leaves the prompt out), LLM2Vec's (mean pooling only)."""
    if config.skip_instruction is not None:
        if config.skip_instruction and pooling == "last":
            raise ValueError(f"skip_instruction=True changes which tokens are pooled, but pooling "
                             f"resolved to {pooling!r}, which reads the last token only; pass another "
                             "pooling or drop skip_instruction")
        return config.skip_instruction
    if not folder.st_include_prompt:  # sentence-transformers Pooling(include_prompt=False): any mode
        return pooling != "last"
    return bool((folder.llm2vec or {}).get("skip_instruction")) and pooling == "mean"


def token_row_shape(model: str | None, max_length: int | None = None,
                    allow_pickle: bool = False) -> tuple[int, int, int]:
    """(tokens per text, token vector width, hidden size) of a local folder as task="tokens"
    runs it (a multi-vector folder: its document side and projection), from its files only."""
    folder = open_model_folder(model, allow_pickle=allow_pickle)
    cfg = folder.hf_config
    limit = getattr(cfg, "max_position_embeddings", None) or 512
    length = max_length or default_max_length(folder, limit)
    width = cfg.hidden_size
    layout = read_multi_vector_layout(folder.path)
    if layout is not None:
        length = layout.max_length("document", length)
        width = layout.projection.out_features if layout.projection else width
    return length, width, cfg.hidden_size


def query_prompt_name(model: str | None) -> str | None:
    """"query" when the folder's sentence-transformers prompts have one (for search queries)."""
    return "query" if "query" in open_model_folder(model).st_prompts else None
