"""The engine: one model on one device, serving one task through packed prefill-only batches.

    engine = Engine(EngineConfig())              # bundled all-MiniLM-L6-v2
    vectors = engine.embed(["a passage", ...])   # (n, dim) float32, input order

    ranker = Engine(EngineConfig(model="ms-marco-MiniLM-L-6-v2", task="score"))
    ranker.score([("query", "passage"), ...])    # (n,) float32
    ranker.rerank("query", ["doc a", "doc b"])   # [(index, score), ...] best first

    labels = Engine(EngineConfig(model="a-classifier", task="classify"))
    labels.classify(["text", ...])               # (n, num_labels) logits; labels.labels: names

    Engine(EngineConfig(task="tokens")).embed_tokens(texts)      # [(L_i, d)] token vectors
    Engine(EngineConfig(model="splade", task="sparse")).embed_sparse(texts)   # [(indices, values)]
    Engine(EngineConfig(model="bge-m3", task="bge-m3")).embed_m3(texts)  # dense, sparse, colbert
    Engine(EngineConfig(task="chunks")).embed_chunks(texts)   # [[(char_start, char_end, vector)]]

Startup resolves everything once (model folder, workflow for (architecture, task), device,
dtype, attention backend, pooling or activation); a call then runs: tokenize -> schedule ->
build -> run (model + head) per the workflow's execute loop, and returns its kind of output.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Hashable, Iterable, Iterator

import numpy as np
import torch

from attention import select_backend

from ..config import EngineConfig
from ..heads.classifier_head import labels_of
from ..inputs.chunking import WindowLedger
from ..loading import lora
from ..loading.fallback import fallback_body, fallback_head, fallback_workflow, implementation
from ..loading.loader import load_side_weights, load_weights, materialize, meta_modules
from ..loading.model_folder import open_model_folder
from ..loading.resolve import resolve
from ..models.packed_linear import pack_linears
from ..quant import int8, int8_bert
from ..workflow import input_processor
from .chunk_outputs import ChunkOutputs
from .feeder import feed_batches
from .input_builder import InputBuilder
from .memory import PROFILE_TOKENS, MemoryBudgetError, profile_token_budget
from .platform import resolve_device, resolve_dtype
from .runner import ModelRunner
from .startup import native_body, output_width, with_task, workflow_for
from .token_outputs import TokenOutputs
from .trace import TraceWindow

logger = logging.getLogger(__name__)

# Texts tokenized at a time: large enough for the tokenizer's own parallelism, small enough that
# a shard's token ids never all sit in memory at once.
_TOKENIZE_CHUNK = 2048


@dataclass
class EngineStats:
    """Cumulative counters over every call (embed, score, classify)."""

    requests: int = 0               # texts or pairs
    tokens: int = 0
    truncated: int = 0
    chunked: int = 0                # texts split into windows (truncation="chunk")
    batches: int = 0
    seconds: float = 0.0            # wall time inside embed / embed_stream
    tokenize_seconds: float = 0.0   # CPU side: tokenizer calls
    build_seconds: float = 0.0      # CPU side: scheduling + packed batch building
    copy_in_seconds: float = 0.0    # CPU side: pinning and issuing input copies (CUDA only)
    forward_seconds: float = 0.0    # device side: model forward + pooling
    copy_out_seconds: float = 0.0   # device side: vectors back to the host (CUDA: incl. the sync)
    idle_seconds: float = 0.0       # device side: waiting for the next batch

    def stage_seconds(self) -> dict[str, float]:
        """Per-stage seconds by name (tokenize, build, copy_in, forward, copy_out, idle)."""
        return {name: getattr(self, f"{name}_seconds") for name in STAGES}

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def idle_fraction(self) -> float:
        """Share of wall time the compute side sat waiting for input."""
        return self.idle_seconds / self.seconds if self.seconds else 0.0


STAGES = ("tokenize", "build", "copy_in", "forward", "copy_out", "idle")


# output kind -> the task that gives it and the methods that return it (named in the error when
# the wrong method is called)
_TASK_OF = {"vector": "embed", "score": "score", "logits": "classify", "tokens": "tokens",
            "sparse": "sparse", "bge_m3": "bge-m3", "chunks": "chunks"}
_METHODS = {"vector": "embed()", "score": "score() / rerank()", "logits": "classify()",
            "tokens": "embed_tokens()", "sparse": "embed_sparse()", "bge_m3": "embed_m3()",
            "chunks": "embed_chunks()"}


class Engine(TokenOutputs, ChunkOutputs):
    def __init__(self, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.folder = open_model_folder(config.model, allow_pickle=config.allow_pickle)
        self.config = config = with_task(config, self.folder)
        self.implementation = implementation(config, self.folder)
        native = self.implementation == "native"
        self.workflow = workflow_for(config, self.folder) if native else fallback_workflow(config, self.folder)
        self.lora = lora.open_adapter(config.lora) if config.lora else None
        if self.lora:
            lora.check_base(self.lora, self.folder)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        body = native_body(self.folder) if native else fallback_body(self.folder, self.workflow, device, dtype)
        self.resolved = r = resolve(config, self.folder, body.max_length, self.workflow, device, dtype)
        processor = input_processor(self.workflow, config.truncation)
        self.processor = processor.for_engine(self.folder.path, r, config)
        with meta_modules():
            self.head = self.workflow.head(self.folder, r, self.processor)
        self.model, self.head = self._load(body, self.head, device, dtype)
        self.backend = select_backend(config.attention_backend, device, dtype)
        self.builder = InputBuilder(self.backend, device, self.workflow.causal, self.model.uses_token_types)
        self.runner = ModelRunner(self.model, self.backend, self.head)
        self.execute_loop = self.workflow.execute_loops[config.execute_loop]
        self.dim = getattr(self.head, "width", None) or output_width(self.workflow, self.folder, r)
        self.labels = labels_of(self.folder.hf_config) if self.workflow.output == "logits" else None
        if device.type == "cuda" and config.max_num_batched_tokens is None:
            try:
                budget = max(profile_token_budget(self), r.max_length)
            except MemoryBudgetError:
                raise
            except Exception as e:  # noqa: BLE001 — not memory (OOM halves inside): keep a small default
                budget = max(min(r.max_num_batched_tokens, PROFILE_TOKENS), r.max_length)
                logger.warning("profiling the token budget failed (%s: %s); using %d tokens; set "
                               "max_num_batched_tokens to choose", type(e).__name__, e, budget)
            self.resolved = r = dataclasses.replace(r, max_num_batched_tokens=budget)
        self.stats = EngineStats()
        self._trace = TraceWindow(config.profile_dir, config.profile_batches, device)
        self.calibration = self._finish_weights(device, dtype)
        self.stats = EngineStats()  # calibration runs are not counted
        logger.info("engine ready: %s (%s) task=%s workflow=%s on %s in %s, pooling=%s normalize=%s "
                    "activation=%s max_length=%d", self.folder.path, self.folder.architecture,
                    config.task, self.workflow.name, device, dtype, r.pooling, r.normalize,
                    r.activation, r.max_length)

    def _load(self, body: torch.nn.Module, head, device, dtype):
        """Materialize the body (and the head, when it has weights) and fill both in one pass
        (a head with `side_weights`, its own files, is filled from those instead), then merge
        the LoRA adapter. A transformers body arrives loaded (fallback.py)."""
        if self.implementation == "transformers":
            body = body.with_budget(self.resolved.max_num_batched_tokens)
            head = fallback_head(self.folder, head, device, dtype)
        else:
            modules = [body] + ([head] if isinstance(head, torch.nn.Module) else [])
            modules = [materialize(m, device, dtype) for m in modules]
            side = getattr(head, "side_weights", None)
            load_weights(modules[:1] if side else modules, self.folder.weights)
            if side:
                load_side_weights(modules[1], side)
            modules = [m.eval().requires_grad_(False) for m in modules]
            body, head = modules[0], (modules[1] if len(modules) > 1 else head)
        if self.lora:
            lora.merge(getattr(body, "hf", body), self.lora, self.folder)
        return body, head

    def _finish_weights(self, device, dtype) -> str | None:
        """After loading (and LoRA): int8 quantization when asked (calibrated by running the
        float body; returns the calibration texts' hash), then the remaining linears packed
        for oneDNN on CPU, then a BERT body's int8 layers fused into one flow (int8_bert.py).
        A transformers body is left as it is."""
        if self.implementation != "native":
            return None
        calibration = None
        if self.config.quantization == "int8":
            if device.type != "cpu" or not int8.available():
                raise ValueError(f"quantization='int8' needs a CPU and torch's oneDNN int8 ops "
                                 f"(device {device}, ops available: {int8.available()}); drop quantization")
            texts = int8.calibration_texts()
            int8.quantize(self.model, int8.calibrate(self.model, self._collect, texts), dtype)
            calibration = int8.calibration_hash(texts)
        pack_linears(self.model, dtype, self.resolved.max_num_batched_tokens)
        if self.config.quantization == "int8":
            int8_bert.fuse_bert_layers(self.model, dtype)
        return calibration

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts`; returns float32 (len(texts), dim) in input order.

        An empty string embeds as the model's special tokens alone (as sentence-transformers
        does); texts over max_length are truncated and counted in `stats.truncated`, raise when
        truncation="error", or with truncation="chunk" embed as the token-weighted mean of
        overlapping windows (counted in `stats.chunked`). Non-string items raise TypeError
        naming their index.
        """
        self._expect("vector", "embed")
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings; wrap a single text as [text]")
        return self._collect(list(texts))

    def classify(self, texts: list[str]) -> np.ndarray:
        """Classify `texts` (task="classify"); returns float32 (len(texts), num_labels): logits,
        or probabilities with activation="softmax". Column j is the label `self.labels[j]`.

            engine = Engine(EngineConfig(model="path/to/classifier", task="classify"))
            names = [engine.labels[j] for j in engine.classify(texts).argmax(1)]
        """
        self._expect("logits", "classify")
        if isinstance(texts, str):
            raise TypeError("classify() takes a list of strings; wrap a single text as [text]")
        return self._collect(list(texts))

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Relevance of each (query, document) pair (task="score"); float32 (len(pairs),), input
        order. A cross-encoder's score is its logit after the folder's activation (sigmoid for
        one label, as CrossEncoder.predict); an LLM reranker's is P("yes"). Pairs over max_length
        are cut like transformers' truncation="longest_first" (counted in `stats.truncated`).

            engine = Engine(EngineConfig(model="path/to/cross-encoder", task="score"))
            engine.score([("what is a vector index?", "A vector index stores ..."), ...])
        """
        self._expect("score", "score")
        if isinstance(pairs, (str, tuple)):
            raise TypeError("score() takes a list of (query, document) pairs; wrap one as [(q, d)]")
        return self._collect(list(pairs))  # each item is checked as it is tokenized

    def rerank(self, query: str, documents: list[str], top_k: int | None = None) -> list[tuple[int, float]]:
        """Score `query` against each document; [(document index, score)] best first (equal
        scores keep input order), the first `top_k` of them (None: all).

            for i, s in engine.rerank("capital of France", passages, top_k=3):
                print(f"{s:.3f}", passages[i])
        """
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, not str")
        if isinstance(documents, str):
            raise TypeError("rerank() takes a list of documents; wrap a single one as [document]")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k={top_k!r} must be a non-negative integer or None")
        scores = self.score([(query, d) for d in documents])
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(int(i), float(scores[i])) for i in order]

    def embed_stream(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Embed an iterable of (key, text) lazily; yields (key, float32 vector) per text.

        Input is pulled a chunk at a time and results leave as each batch finishes (batch order,
        not input order), so memory stays bounded however long the stream is. Example:

            for key, vector in engine.embed_stream((row_id, text) for row_id, text in rows):
                sink.write(key, vector)
        """
        self._expect("vector", "embed_stream")
        keys: dict[int, Hashable] = {}

        def texts():
            for i, (key, text) in enumerate(items):
                keys[i] = key
                yield text

        for indices, vectors in self._run(texts()):
            for i, vector in zip(indices.tolist(), vectors):
                yield keys.pop(i), vector

    def _expect(self, output: str, method: str) -> None:
        if self.workflow.output != output:
            raise TypeError(f"{method}() needs an engine started with task={_TASK_OF[output]!r}; "
                            f"this one runs task={self.config.task!r} ({self.workflow.name} workflow): "
                            f"call {_METHODS[self.workflow.output]}, or start another engine")

    def _collect(self, items: list) -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for indices, values in self._run(items):
            out[indices] = values
        return out[:, 0] if self.workflow.output == "score" else out

    def _run(self, items: Iterable, processor=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t0 = time.perf_counter()
        r = self.resolved
        scheduler = self.workflow.scheduler(r.max_num_batched_tokens, r.max_num_seqs)
        ledger = WindowLedger()
        batches = feed_batches(items, processor or self.processor, scheduler, self.builder,
                               self.stats, _TOKENIZE_CHUNK, ledger)
        try:
            results = self._trace.wrap(self.execute_loop(batches, self.runner, self.stats))
            combine = getattr(self.processor, "combiner", None)
            yield from combine(results, ledger, r.normalize) if combine else results
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def fingerprint(self) -> dict:
        """Everything that determines the outputs, as JSON-able values (for output manifests)."""
        r = self.resolved
        fp = {"model": self.folder.path.name, "model_hash": self.folder.identity(),
              "architecture": self.folder.architecture, "pooling": r.pooling,
              "normalize": r.normalize, "dimensions": self.dim, "max_length": r.max_length,
              "truncation": self.config.truncation, "dtype": str(r.dtype).removeprefix("torch."),
              "attention": self.backend.name}
        # Added only when they apply, so embedding fingerprints (and their manifests) stay as they were.
        if self.workflow.name != "encoder":
            fp["workflow"] = self.workflow.name
        if self.config.task != "embed":
            fp["task"] = self.config.task
        if r.activation is not None:
            fp["activation"] = r.activation
        if r.prompt:
            fp["prompt"] = r.prompt
        if r.skip_instruction:
            fp["skip_instruction"] = True
        if self.workflow.output in ("vector", "chunks") and self.folder.st_dense:  # the folder's Dense stack
            fp["dense"] = [[d["path"], d["in_features"], d["out_features"], d["activation"].rsplit(".", 1)[-1],
                            d["residual"]] for d in self.folder.st_dense]
        if self.implementation == "transformers":
            fp["implementation"] = "transformers"
        if self.lora:
            fp["lora"] = self.lora.hash
        if self.config.quantization:
            fp["quantization"] = {"method": self.config.quantization, "alpha": int8.ALPHA,
                                  "keep_float": list(int8.KEEP_FLOAT), "calibration": self.calibration}
        fp.update(self.processor.fingerprint())
        return fp
