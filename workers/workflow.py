"""Workflows: every task the engine serves, and the modules each one is made of.

A workflow is a set of modules for one (architecture, task): the input processor that turns
user items into token ids, whether attention is causal (declared here and nowhere else), the
head that turns the model's (T, hidden) states into numbers, the kind of output, the scheduler
and the execute loops. The engine picks one at start-up with `select_workflow`; a new task is a
new row here built from new modules, not a flag through a shared path (see docs/WORKFLOWS.md).

| workflow              | task     | input (truncation -> processor)       | attention     | head                 | output |
|-----------------------|----------|----------------------------------------|---------------|----------------------|--------|
| encoder               | embed    | single text; chunk: windows + combiner | bidirectional | dense pooler (cls)   | vector |
| decoder               | embed    | single text; chunk: windows + combiner | causal        | dense pooler (last)  | vector |
| decoder_bidirectional | embed    | single text; chunk: windows + combiner | bidirectional | dense pooler (mean)  | vector |
  (decoder_bidirectional also serves Gemma3TextModel, i.e. EmbeddingGemma, which is only ever
  bidirectional; a folder's sentence-transformers Dense modules run inside the dense pooler.)
| cross_encoder         | score    | text pair                              | bidirectional | sequence-cls head    | score  |
| classifier            | classify | single text                            | bidirectional | sequence-cls head    | logits |
| llm_reranker          | score    | reranker prompt around a pair          | causal        | LM-head yes/no slice | score  |
| token_embed           | tokens   | single text; multi-vector query/doc side | bidirectional | token states / ColBERT projection | tokens |
| splade                | sparse   | single text                            | bidirectional | MLM head, SPLADE max | sparse |
| bge_m3                | bge-m3   | single text                            | bidirectional | dense + sparse + colbert | bge_m3 |
| late_chunk            | chunks   | late: documents (macro windows), per-token pieces; split: chunk texts | bidirectional | span sums / dense pooler | chunks |
| decoder_late_chunk    | chunks   | same                                   | causal        | same                 | chunks |
| decoder_bidirectional_late_chunk | chunks | same                          | bidirectional | same                 | chunks |

Both execute loops (simple, double_buffer) serve every workflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .engine.execute_loop import EXECUTE_LOOPS
from .engine.scheduler import Scheduler
from .heads import bge_m3_head, splade_head, token_head
from .heads.activation import ACTIVATIONS, cross_encoder_activation
from .heads.classifier_head import CLASSIFIER_HEADS
from .heads.pooling import DensePooler, Pooler
from .heads.span_head import SpanHead
from .heads.yes_no_head import YesNoHead
from .inputs.chunked_input import ChunkedInputProcessor
from .inputs.input_processor import InputProcessor, TextInputProcessor
from .inputs.late_chunk_input import ChunkSpanProcessor
from .inputs.pair_input import PairInputProcessor
from .inputs.reranker_input import RerankerPromptProcessor
from .inputs.token_input import TokenInputProcessor

OUTPUTS = ("vector", "score", "logits")  # (n, dim) | (n,) | (n, num_labels), float32
# Ragged outputs (heads return flat tensors + offsets, see ragged.py): (L_i, d) per text |
# (indices, values) per text | bge-m3's dense + sparse + colbert per text | chunk vectors per text
RAGGED_OUTPUTS = ("tokens", "sparse", "bge_m3", "chunks")


def dense_pooler(folder, resolved, processor) -> Pooler | DensePooler:
    if folder.st_dense:  # sentence-transformers Dense modules after pooling (EmbeddingGemma)
        return DensePooler(resolved.pooling, resolved.normalize, resolved.dimensions,
                           folder.st.post, folder.hf_config.hidden_size)
    return Pooler(resolved.pooling, resolved.normalize, resolved.dimensions)


def span_head(folder, resolved, processor) -> SpanHead:
    """task="chunks": late chunking pools a span by its mean (H wide), so concatenated pooling
    modes, whose split vectors would be wider, are refused."""
    if "+" in resolved.pooling:
        raise ValueError(f"task='chunks' pools each span by its mean, but pooling={resolved.pooling!r} "
                         "concatenates several modes (a wider vector than a span mean); pass a single "
                         "pooling= mode")
    return SpanHead(dense_pooler(folder, resolved, processor))


def sequence_classification_head(folder, resolved, processor) -> nn.Module:
    return CLASSIFIER_HEADS[folder.architecture](folder.hf_config, ACTIVATIONS[resolved.activation])


def yes_no_head(folder, resolved, processor) -> nn.Module:
    return YesNoHead(folder.hf_config, processor.answer_ids)


@dataclass(frozen=True)
class Workflow:
    name: str
    task: str                                   # what the caller asks for: embed | score | classify
    architectures: frozenset[str]               # HF `architectures` values this workflow serves
    inputs: dict[str, type[InputProcessor]]     # truncation policy -> input processor
    head: Callable                              # (folder, resolved, processor) -> head module
    output: str                                 # one of OUTPUTS
    causal: bool                                # attention mask: the one place it is declared
    default_pooling: str                        # the token(s) the head reads when nothing says
    default_activation: Callable | None = None  # (folder path, hf config) -> activation name
    scheduler: type[Scheduler] = Scheduler
    execute_loops: dict[str, Callable] = field(default_factory=lambda: dict(EXECUTE_LOOPS))


_BERTS = ("Bert", "Roberta", "XLMRoberta")
# Bidirectional encoders with their own bodies (workers/models/): MPNet (relative position bias),
# DistilBERT (no token types), ModernBERT (RoPE, alternating global and sliding-window layers).
_OTHER_ENCODERS = ("MPNet", "DistilBert", "ModernBert")
ENCODERS = frozenset(f"{f}{s}" for f in _BERTS + _OTHER_ENCODERS for s in ("Model", "ForMaskedLM"))
SEQUENCE_CLASSIFIERS = frozenset(f"{f}ForSequenceClassification" for f in _BERTS)
DECODERS = frozenset(f"{f}{s}" for f in ("Qwen2", "Qwen3", "Llama", "Mistral")
                     for s in ("Model", "ForCausalLM"))
# Decoder bodies trained for bidirectional attention only (EmbeddingGemma): no causal row.
BIDIRECTIONAL_ONLY = frozenset({"Gemma3TextModel"})
LLM_RERANKERS = frozenset({"Qwen3ForCausalLM"})

_TEXT = {"truncate": TextInputProcessor, "error": TextInputProcessor, "chunk": ChunkedInputProcessor}
_PAIR = {"truncate": PairInputProcessor, "error": PairInputProcessor}
_PROMPT = {"truncate": RerankerPromptProcessor, "error": RerankerPromptProcessor}
_SINGLE = {"truncate": TextInputProcessor, "error": TextInputProcessor}
_TOKENS = {"truncate": TokenInputProcessor, "error": TokenInputProcessor}
_CHUNKS = {"truncate": ChunkSpanProcessor}  # its for_engine builds the config's chunking mode
SPLADE_MLMS = frozenset({"BertForMaskedLM"})
BGE_M3 = frozenset({"XLMRobertaModel"})

WORKFLOWS: dict[str, Workflow] = {w.name: w for w in (
    Workflow("encoder", "embed", ENCODERS, _TEXT, dense_pooler, "vector", causal=False,
             default_pooling="cls"),
    # Decoder retrievers (Qwen3-Embedding, gte-Qwen2, e5-mistral): the last token sees all.
    Workflow("decoder", "embed", DECODERS, _TEXT, dense_pooler, "vector", causal=True,
             default_pooling="last"),
    # Decoders switched to bidirectional attention (LLM2Vec): every token sees every other.
    Workflow("decoder_bidirectional", "embed", DECODERS | BIDIRECTIONAL_ONLY, _TEXT, dense_pooler, "vector",
             causal=False, default_pooling="mean"),
    # Cross-encoders (ms-marco MiniLM, bge-reranker): one relevance score per pair.
    Workflow("cross_encoder", "score", SEQUENCE_CLASSIFIERS, _PAIR, sequence_classification_head,
             "score", causal=False, default_pooling="cls", default_activation=cross_encoder_activation),
    Workflow("classifier", "classify", SEQUENCE_CLASSIFIERS, {"truncate": TextInputProcessor,
             "error": TextInputProcessor}, sequence_classification_head, "logits", causal=False,
             default_pooling="cls", default_activation=lambda path, cfg: "identity"),
    # Qwen3-Reranker: a causal LM asked "yes or no?"; only two LM-head rows are ever loaded.
    Workflow("llm_reranker", "score", LLM_RERANKERS, _PROMPT, yes_no_head, "score", causal=True,
             default_pooling="last"),
    # Token vectors: last hidden states, or a multi-vector folder's ColBERT projection.
    Workflow("token_embed", "tokens", ENCODERS, _TOKENS, token_head.build, "tokens", causal=False,
             default_pooling="all"),
    # SPLADE (SparseEncoder): the MLM head in chunks, log1p(relu) max-pooled into vocab space.
    Workflow("splade", "sparse", SPLADE_MLMS, _SINGLE, splade_head.build, "sparse", causal=False,
             default_pooling="max"),
    # bge-m3: dense, sparse and multi-vector from one forward of an XLM-R body.
    Workflow("bge_m3", "bge-m3", BGE_M3, _SINGLE, bge_m3_head.build, "bge_m3", causal=False,
             default_pooling="cls"),
    # Chunk vectors (late chunking, or each chunk alone): the embedding rows' bodies and poolers.
    Workflow("late_chunk", "chunks", ENCODERS, _CHUNKS, span_head, "chunks", causal=False,
             default_pooling="cls"),
    Workflow("decoder_late_chunk", "chunks", DECODERS, _CHUNKS, span_head, "chunks", causal=True,
             default_pooling="last"),
    Workflow("decoder_bidirectional_late_chunk", "chunks", DECODERS | BIDIRECTIONAL_ONLY, _CHUNKS,
             span_head, "chunks", causal=False, default_pooling="mean"),
)}


def supported() -> list[tuple[str, str]]:
    """Every (architecture, task) pair some workflow serves, sorted."""
    return sorted({(a, w.task) for w in WORKFLOWS.values() for a in w.architectures})


def select_workflow(architecture: str, task: str, bidirectional: bool | None = None) -> Workflow:
    """The workflow for `architecture` and `task`; `bidirectional` (the resolved
    enable_bidirectional, None: no preference) chooses between causal and bidirectional rows."""
    rows = [w for w in WORKFLOWS.values() if w.task == task and architecture in w.architectures]
    if not rows:
        combos = ", ".join(f"{a}/{t}" for a, t in supported())
        raise ValueError(f"architecture {architecture!r} with task={task!r} is not supported; "
                         f"supported (architecture/task): {combos}")
    if len(rows) > 1:
        return next(w for w in rows if w.causal != bool(bidirectional))
    workflow = rows[0]
    if bidirectional is not None and bidirectional == workflow.causal:
        kind = "causal" if workflow.causal else "bidirectional"
        raise ValueError(f"enable_bidirectional={bidirectional} asks for the other attention, but "
                         f"{architecture} with task={task!r} runs {kind} attention"
                         f"{' (a bidirectional encoder)' if not workflow.causal else ''}; leave it None")
    return workflow


def input_processor(workflow: Workflow, truncation: str) -> type[InputProcessor]:
    """The workflow's input processor for a truncation policy (ValueError if it has none)."""
    if truncation not in workflow.inputs:
        raise ValueError(f"truncation={truncation!r} is not supported by the {workflow.name} workflow "
                         f"(task={workflow.task!r}); use one of {sorted(workflow.inputs)}")
    return workflow.inputs[truncation]
