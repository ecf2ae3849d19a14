"""The engine: one model on one device, embedding texts through packed prefill-only batches.

    engine = Engine(EngineConfig())              # bundled all-MiniLM-L6-v2
    vectors = engine.embed(["a passage", ...])   # (n, dim) float32, input order

Startup resolves everything once (model folder, workflow, device, dtype, attention backend,
pooling); `embed` then runs: tokenize -> schedule -> build -> run -> pool, per the workflow's
execute loop.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Hashable, Iterable, Iterator

import numpy as np
import torch

from attention import select_backend

from .config import DEFAULT_CPU_BATCHED_TOKENS, DEFAULT_GPU_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, EngineConfig
from .input_builder import InputBuilder
from .loader import load_weights
from .memory import MemoryBudgetError, profile_token_budget
from .model_folder import ModelFolder, open_model_folder
from .models import model_class
from .platform import resolve_device, resolve_dtype
from .pooling import POOLERS, Pooler
from .runner import ModelRunner
from .chunking import WindowLedger, combine_windows
from .feeder import feed_batches
from .workflow import select_workflow

logger = logging.getLogger(__name__)

# Texts tokenized at a time: large enough for the tokenizer's own parallelism, small enough that
# a shard's token ids never all sit in memory at once.
_TOKENIZE_CHUNK = 2048


@dataclass
class EngineStats:
    """Cumulative counters over every `embed` call."""

    requests: int = 0
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


STAGES = ("tokenize", "build", "copy_in", "forward", "copy_out", "idle")


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.folder = open_model_folder(config.model, allow_pickle=config.allow_pickle)
        model_cls = model_class(self.folder.architecture)
        self.workflow = _workflow(config, self.folder, model_cls)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        self.model = self._load_model(model_cls, device, dtype)
        self.resolved = r = _resolve(config, self.folder, self.model, self.workflow, device, dtype)
        self.backend = select_backend(config.attention_backend, device, dtype)
        self.processor = self.workflow.input_processor(self.folder.path, r.max_length, config.truncation,
                                                       prompt=r.prompt, skip_instruction=r.skip_instruction,
                                                       chunk_overlap=config.chunk_overlap)
        self.builder = InputBuilder(self.backend, device, self.workflow.causal, self.model.uses_token_types)
        self.runner = ModelRunner(self.model, self.backend, Pooler(r.pooling, r.normalize, r.dimensions))
        self.execute_loop = self.workflow.execute_loops[config.execute_loop]
        self.dim = r.dimensions or self.folder.hf_config.hidden_size
        if device.type == "cuda" and config.max_num_batched_tokens is None:
            try:
                budget = max(profile_token_budget(self), r.max_length)
            except MemoryBudgetError:
                raise
            except Exception as e:  # noqa: BLE001 — keep the fixed default rather than fail to start
                budget = r.max_num_batched_tokens
                logger.warning("profiling the token budget failed (%s: %s); using the default "
                               "%d tokens; set max_num_batched_tokens to choose", type(e).__name__,
                               e, budget)
            self.resolved = r = dataclasses.replace(r, max_num_batched_tokens=budget)
        self.stats = EngineStats()
        self._trace = _TraceWindow(config.profile_dir, config.profile_batches, device)
        logger.info("engine ready: %s (%s) on %s in %s, pooling=%s normalize=%s max_length=%d",
                    self.folder.path, self.folder.architecture, device, dtype, r.pooling,
                    r.normalize, r.max_length)

    def _load_model(self, model_cls, device, dtype) -> torch.nn.Module:
        with torch.device("meta"):
            model = model_cls(self.folder.hf_config)
        model = model.to_empty(device=device).to(dtype)
        load_weights(model, self.folder.weights)
        return model.eval().requires_grad_(False)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts`; returns float32 (len(texts), dim) in input order.

        An empty string embeds as the model's special tokens alone (as sentence-transformers
        does); texts over max_length are truncated and counted in `stats.truncated`, raise when
        truncation="error", or with truncation="chunk" embed as the token-weighted mean of
        overlapping windows (counted in `stats.chunked`). Non-string items raise TypeError
        naming their index.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings; wrap a single text as [text]")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for indices, vectors in self._run(texts):
            out[indices] = vectors
        return out

    def embed_stream(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Embed an iterable of (key, text) lazily; yields (key, float32 vector) per text.

        Input is pulled a chunk at a time and results leave as each batch finishes (batch order,
        not input order), so memory stays bounded however long the stream is. Example:

            for key, vector in engine.embed_stream((row_id, text) for row_id, text in rows):
                sink.write(key, vector)
        """
        keys: dict[int, Hashable] = {}

        def texts():
            for i, (key, text) in enumerate(items):
                keys[i] = key
                yield text

        for indices, vectors in self._run(texts()):
            for i, vector in zip(indices.tolist(), vectors):
                yield keys.pop(i), vector

    def _run(self, texts: Iterable[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t0 = time.perf_counter()
        r = self.resolved
        scheduler = self.workflow.scheduler(r.max_num_batched_tokens, r.max_num_seqs)
        ledger = WindowLedger()
        batches = feed_batches(texts, self.processor, scheduler, self.builder, self.stats,
                               _TOKENIZE_CHUNK, ledger)
        try:
            results = self._trace.wrap(self.execute_loop(batches, self.runner, self.stats))
            yield from combine_windows(results, ledger, r.normalize)
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def fingerprint(self) -> dict:
        """Everything that determines the vectors, as JSON-able values (for output manifests)."""
        r = self.resolved
        fp = {"model": self.folder.path.name, "model_hash": self.folder.identity(),
              "architecture": self.folder.architecture, "pooling": r.pooling,
              "normalize": r.normalize, "dimensions": self.dim, "max_length": r.max_length,
              "truncation": self.config.truncation, "dtype": str(r.dtype).removeprefix("torch.")}
        # Added only when they apply, so encoder fingerprints (and their manifests) stay as they were.
        if self.workflow.name != "encoder":
            fp["workflow"] = self.workflow.name
        if r.prompt:
            fp["prompt"] = r.prompt
        if r.skip_instruction:
            fp["skip_instruction"] = True
        if self.config.truncation == "chunk":
            fp["chunk_overlap"] = self.processor.chunk_overlap
        return fp


class _TraceWindow:
    """The profile switch: a torch profiler trace of a few batches, once per engine.

    The window opens at the engine's second batch (the first is warm-up), whichever `embed`
    call it falls in, and closes after `batches` batches or when that call ends; the Chrome
    trace goes to `<folder>/engine-<pid>-<n>.json` (`.path` once written). Ops on the caller's
    thread are recorded (forward, pooling, copies); CUDA kernels too on a GPU.
    """

    def __init__(self, folder: str | None, batches: int, device: torch.device):
        self.folder, self.batches, self.device = folder, batches, device
        self.path: str | None = None
        self.seen = 0  # batches this engine has run, over all calls

    def wrap(self, results):
        if self.folder is None or self.path is not None:
            yield from results
            return
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        prof, profiled = None, 0
        try:
            for item in results:
                if prof is None and self.path is None and self.seen >= 1:
                    prof = profile(activities=activities)
                    prof.start()
                self.seen += 1
                if prof is not None:
                    profiled += 1
                    if profiled > self.batches:
                        self._write(prof, profiled - 1)
                        prof = None
                yield item
        finally:
            if prof is not None:
                self._write(prof, profiled)

    def _write(self, prof, batches: int) -> None:
        prof.stop()
        os.makedirs(self.folder, exist_ok=True)
        n = 0
        while os.path.exists(path := os.path.join(self.folder, f"engine-{os.getpid()}-{n}.json")):
            n += 1
        prof.export_chrome_trace(path)
        self.path = path
        logger.info("profiler trace of %d batch(es) written to %s", batches, path)


def _workflow(config: EngineConfig, folder: ModelFolder, model_cls):
    """The model family's workflow; a decoder's attention is the config's enable_bidirectional,
    else what the folder declares, else causal."""
    family = getattr(model_cls, "workflow", "encoder")
    bidirectional = config.enable_bidirectional
    if bidirectional is None and family != "encoder":
        bidirectional = folder.declared_bidirectional
    return select_workflow(family, bidirectional, folder.architecture)


def _resolve(config: EngineConfig, folder: ModelFolder, model, workflow, device, dtype) -> Resolved:
    limit = model.max_length
    llm2vec = folder.llm2vec or {}
    max_length = config.max_length or min(folder.st_max_length or llm2vec.get("max_length") or limit, limit)
    if max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds what {folder.architecture} at "
                         f"{folder.path} supports ({limit} positions); lower max_length")
    pooling = config.pooling or folder.st_pooling or llm2vec.get("pooling") or workflow.default_pooling
    if pooling not in POOLERS:
        raise ValueError(f"{folder.path} asks for pooling {pooling!r}, which is not supported; "
                         f"pass pooling= one of {sorted(POOLERS)}")
    normalize = folder.st_normalize if config.normalize is None else config.normalize
    hidden = folder.hf_config.hidden_size
    if config.dimensions is not None and config.dimensions > hidden:
        raise ValueError(f"dimensions={config.dimensions} exceeds the model's hidden size {hidden}")
    default_budget = DEFAULT_GPU_BATCHED_TOKENS if device.type == "cuda" else DEFAULT_CPU_BATCHED_TOKENS
    budget = config.max_num_batched_tokens or max(default_budget, max_length)
    if budget < max_length:
        raise ValueError(f"max_num_batched_tokens={budget} is below max_length={max_length}: one "
                         "text must fit in a batch; raise the budget or lower max_length")
    return Resolved(device, dtype, max_length, pooling, normalize, config.dimensions, budget,
                    config.max_num_seqs or DEFAULT_MAX_NUM_SEQS, _prompt(config, folder),
                    _skip_instruction(config, folder, pooling))


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
    """config.skip_instruction, else the folder's (ST include_prompt=false, LLM2Vec), mean only."""
    if config.skip_instruction is not None:
        if config.skip_instruction and pooling != "mean":
            raise ValueError(f"skip_instruction=True only changes mean pooling, but pooling resolved "
                             f"to {pooling!r}; pass pooling='mean' or drop skip_instruction")
        return config.skip_instruction
    from_folder = (not folder.st_include_prompt) or bool((folder.llm2vec or {}).get("skip_instruction"))
    return from_folder and pooling == "mean"
