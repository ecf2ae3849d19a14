"""User configuration of one engine: a frozen dataclass, validated on construction.

Values left as None are resolved from the model folder (pooling, normalize, max length) or the
machine (dtype, device, attention backend) when the engine starts; see `Engine`.
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
# Pooler names (workers/heads/pooling.py); "a+b" concatenates (sentence-transformers' multi-mode Pooling).
POOLINGS = ("cls", "mean", "last", "max", "mean_sqrt_len_tokens", "weightedmean")
EXECUTE_LOOPS = ("simple", "double_buffer")
TRUNCATIONS = ("truncate", "error", "chunk")
TASKS = ("embed", "score", "classify", "tokens", "sparse", "bge-m3", "chunks")
CHUNKINGS = ("late", "split")
ACTIVATIONS = ("sigmoid", "softmax", "identity")
IMPLEMENTATIONS = ("auto", "native", "transformers")
QUANTIZATIONS = (None, "int8")
# Options that shape vectors only: refused for task="score"/"classify", which return numbers.
_EMBED_ONLY = ("pooling", "normalize", "dimensions", "skip_instruction", "prompt_name", "chunk_overlap")

# On CPU, packed batches of a few thousand tokens keep every activation under glibc's mmap
# threshold region and the caches warm (docs/DESIGN.md: 4k-8k chunks beat 16k).
DEFAULT_CPU_BATCHED_TOKENS = 4096
DEFAULT_GPU_BATCHED_TOKENS = 32768
DEFAULT_MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class EngineConfig:
    """How one engine embeds.

    Args:
        task: what the engine serves (see `workers/workflow.py` for the table); None (default):
            what the model folder's kind names (a sentence-transformers SparseEncoder "sparse",
            CrossEncoder "score" or "classify", MultiVectorEncoder "tokens", else "embed"; see
            `ModelFolder.default_task`), logged at start-up. A task the folder's kind cannot
            serve is refused naming the kind. The tasks:
            "embed" (vectors; `Engine.embed`), "score" (cross-encoder or LLM-reranker relevance of
            (query, document) pairs; `Engine.score` / `Engine.rerank`), "classify" (sequence
            classification logits; `Engine.classify`), "tokens" (one vector per token: last
            hidden states, or a multi-vector/ColBERT folder's projected vectors;
            `Engine.embed_tokens`), "sparse" (SPLADE vocabulary weights; `Engine.embed_sparse`)
            "bge-m3" (bge-m3's dense, sparse and multi-vector outputs; `Engine.embed_m3`) or
            "chunks" (one vector per chunk of each text, late or split chunking;
            `Engine.embed_chunks`; set by itself when `chunking` or `chunk_tokens` is given).
        activation: score/classify only: "sigmoid", "softmax" or "identity" applied to the
            head's logits. None: for score, what sentence-transformers' CrossEncoder.predict
            applies for the folder (its saved activation_fn, else sigmoid for one label); for
            classify, identity (raw logits).
        model: a local model folder (HF `config.json` + tokenizer + `*.safetensors`, optionally a
            sentence-transformers layout). None: the bundled all-MiniLM-L6-v2.
        dtype: compute dtype; "auto" is bfloat16 on a GPU or a CPU with bf16 matmul support
            (AMX / AVX512-BF16), else float32.
        device: "auto" (cuda if present), "cpu", "cuda" or "cuda:N".
        attention_backend: None (best available) or one of attention.BACKENDS.
        max_num_batched_tokens: token budget of one packed batch. None: on CPU 4096 tokens (the
            benchmark's choice); on CUDA the largest budget whose profiled activation memory fits
            in `gpu_memory_utilization` of the card (see `workers/engine/memory.py`).
        gpu_memory_utilization: share of the GPU's memory this engine may fill (weights, the
            profiled activations of the largest batch, and what others already use). Default 0.9.
        max_num_seqs: most sequences in one batch (None: 256).
        max_length: tokens per text including special tokens (None: the model folder's
            max_seq_length, else its max_position_embeddings).
        pooling: "cls" | "mean" | "last" | "max" | "mean_sqrt_len_tokens" | "weightedmean", or
            several joined by "+" (their vectors concatenated, as sentence-transformers does for a
            multi-mode Pooling). None: the folder's sentence-transformers Pooling, else "cls".
        normalize: L2-normalize outputs (None: True when the folder declares a Normalize module).
        dimensions: Matryoshka truncation of the output (then renormalized if normalizing).
        truncation: for texts over max_length: "truncate" (default; counted in stats), "error",
            or "chunk": split into windows of max_length that overlap by `chunk_overlap` tokens,
            embed each, and return their token-weighted mean (normalized again if normalizing).
        chunk_overlap: tokens shared by consecutive windows in chunk mode (None: an eighth of
            the window, e.g. 31 of MiniLM's 254). task="chunks": tokens shared by consecutive
            chunks (None: 0), the default of `embed_chunks(chunk_overlap=)`.
        chunking: task="chunks" only: "late" (default: each text encoded once, up to max_length,
            longer ones in macro windows overlapping by half a window, and each chunk's token
            span mean-pooled from the final hidden states, then the folder's Dense/Normalize
            modules) or "split" (each chunk's text embedded alone, as `embed` does). The
            default of `embed_chunks(chunking=)`; see `workers/engine/chunk_outputs.py`.
        chunk_tokens: task="chunks" only: tokens per chunk (None: 256), the default of
            `embed_chunks(chunk_tokens=)`.
        num_threads: torch intra-op threads for CPU work (None: leave torch's setting).
        execute_loop: "simple" (build, run, collect, repeat) or "double_buffer" (a producer
            thread tokenizes and builds batch k+1 while batch k runs; same vectors).
        prompt: text prepended to every input (e.g. "query: " or an instruction). None: the
            folder's sentence-transformers prompt named by `prompt_name` or its default prompt.
            For an LLM reranker (task="score" on a causal LM) it is the `<Instruct>` of the
            prompt template instead (None: the published default instruction).
        prompt_name: a key of `prompts` in the folder's config_sentence_transformers.json
            (e.g. "query", "document"); exclusive with `prompt`.
        skip_instruction: leave the prompt (and leading special tokens such as BOS/CLS) out of
            pooling, as LLM2Vec and sentence-transformers' `include_prompt: false` do (cls then
            reads the first token after the prompt; last-token pooling is unchanged, so it is
            refused with it). None: the folder's setting (sentence-transformers
            `include_prompt: false`, any mode; llm2vec_config.json, mean only), else False.
        enable_bidirectional: decoders only. None: read the folder (`is_causal: false` in
            config.json, or an llm2vec_config.json, means bidirectional), else causal;
            True/False overrides.
        profile_dir: write a torch profiler trace (Chrome JSON, open in Perfetto or
            chrome://tracing) of `profile_batches` batches, after one warm-up batch, into this
            folder; once per engine. None: no profiling.
        profile_batches: batches the profiler window covers.
        allow_pickle: load a folder whose only weights are pickle files (`pytorch_model.bin`),
            with torch.load(weights_only=True). Default False: such folders are refused, since
            unpickling can run code; convert them to safetensors instead.
        implementation: "auto" (this package's packed body when it has the architecture, else
            transformers), "native" (packed body only; an unknown architecture is an error) or
            "transformers" (padded, length-sorted batches through transformers' own class, even
            for BERT; never remote code). See `workers/loading/fallback.py`.
        lora: a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors),
            merged into the weights at load (W += B @ A * alpha / r). None: no adapter.
        quantization: None (weights in `dtype`) or "int8": CPU only, task="embed" with this
            package's own body; int8 weights with per-token int8 activations after SmoothQuant
            calibration on fixed sample passages (see `workers/quant/int8.py`); the rest of the model
            runs in `dtype`. Changes the vectors slightly, so it is part of the fingerprint.
    """

    model: str | None = None
    task: str | None = None
    activation: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    attention_backend: str | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_length: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    truncation: str = "truncate"
    chunk_overlap: int | None = None
    num_threads: int | None = None
    execute_loop: str = "simple"
    prompt: str | None = None
    prompt_name: str | None = None
    skip_instruction: bool | None = None
    enable_bidirectional: bool | None = None
    gpu_memory_utilization: float = 0.9
    profile_dir: str | None = None
    profile_batches: int = 8
    allow_pickle: bool = False
    implementation: str = "auto"
    lora: str | None = None
    quantization: str | None = None
    chunking: str | None = None
    chunk_tokens: int | None = None

    def __post_init__(self):
        self._check_chunking()
        if self.task is not None:
            _choice("task", self.task, TASKS)
        if self.activation is not None:
            _choice("activation", self.activation, ACTIVATIONS)
        self._check_task_options()
        _choice("dtype", self.dtype, DTYPES)
        _choice("implementation", self.implementation, IMPLEMENTATIONS)
        self._check_quantization()
        if self.lora is not None and not isinstance(self.lora, str):
            raise ValueError(f"lora={self.lora!r} must be the path of a PEFT adapter folder (str) or None")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r} is not one of {DEVICES} or 'cuda:N'")
        if self.pooling is not None:
            if not isinstance(self.pooling, str) or not self.pooling.split("+")[0]:
                raise ValueError(f"pooling={self.pooling!r} must be one of {list(POOLINGS)} "
                                 "(or several joined by '+', concatenated)")
            for mode in self.pooling.split("+"):
                _choice("pooling", mode, POOLINGS)
        _choice("truncation", self.truncation, TRUNCATIONS)
        _choice("execute_loop", self.execute_loop, EXECUTE_LOOPS)
        if self.chunk_overlap is not None and (not isinstance(self.chunk_overlap, int)
                                               or self.chunk_overlap < 0):
            raise ValueError(f"chunk_overlap={self.chunk_overlap!r} must be an integer >= 0 or None")
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_length", "dimensions", "num_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive integer or None")
        if (self.max_length and self.max_num_batched_tokens
                and self.max_length > self.max_num_batched_tokens):
            raise ValueError(
                f"max_length={self.max_length} exceeds max_num_batched_tokens="
                f"{self.max_num_batched_tokens}: one text must fit in a batch; raise the budget")
        self._check_prompt_options()
        util = self.gpu_memory_utilization
        if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1:
            raise ValueError(f"gpu_memory_utilization={util!r} must be a fraction in (0, 1], e.g. 0.9")
        if not isinstance(self.profile_batches, int) or self.profile_batches < 1:
            raise ValueError(f"profile_batches={self.profile_batches!r} must be a positive integer")

    def _check_task_options(self) -> None:
        if self.task is None:  # the folder's kind decides at start-up, and this runs again then
            return
        if self.task in ("embed", "chunks"):
            if self.activation is not None:
                raise ValueError(f"activation={self.activation!r} applies to task='score' or "
                                 "'classify'; embeddings take normalize= instead; drop activation")
            if self.task == "chunks" and self.truncation != "truncate":
                raise ValueError(f"truncation={self.truncation!r} does not apply to task='chunks': "
                                 "late chunking encodes long texts in macro windows, split chunking "
                                 "embeds chunks of chunk_tokens; drop truncation")
            return
        for name in _EMBED_ONLY:
            if getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} shapes embeddings only, but "
                                 f"task={self.task!r}; drop {name} (or use task='embed')")
        if self.truncation == "chunk":
            raise ValueError(f"truncation='chunk' embeds windows, which has no meaning for "
                             f"task={self.task!r}; use 'truncate' or 'error'")

    def _check_chunking(self) -> None:
        """chunking / chunk_tokens ask for task="chunks" (set here when the task is None)."""
        if self.chunking is None and self.chunk_tokens is None:
            return
        if self.chunking is not None:
            _choice("chunking", self.chunking, CHUNKINGS)
        value = self.chunk_tokens
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"chunk_tokens={value!r} must be a positive integer or None (256)")
        if self.task is None:
            object.__setattr__(self, "task", "chunks")
        elif self.task != "chunks":
            raise ValueError(f"chunking={self.chunking!r} / chunk_tokens={value!r} embed chunks of a "
                             f"text (task='chunks'), but task={self.task!r}; drop them or the task")
        overlap = self.chunk_overlap or 0
        if not isinstance(overlap, int) or overlap >= (value or 256):
            raise ValueError(f"chunk_overlap={self.chunk_overlap!r} must be below chunk_tokens="
                             f"{value or 256} with task='chunks'")

    def _check_quantization(self) -> None:
        _choice("quantization", self.quantization, QUANTIZATIONS)
        if self.quantization is None:
            return
        if self.device.startswith("cuda"):
            raise ValueError(f"quantization={self.quantization!r} runs on CPU only (oneDNN int8); "
                             f"device={self.device!r}: use device='cpu' or drop quantization")
        if self.task not in (None, "embed"):
            raise ValueError(f"quantization={self.quantization!r} is calibrated for task='embed' only, "
                             f"not task={self.task!r}; drop quantization")
        if self.implementation == "transformers":
            raise ValueError("quantization='int8' needs this package's own model body; use "
                             "implementation='auto' or 'native', or drop quantization")

    def _check_prompt_options(self) -> None:
        for name in ("prompt", "prompt_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}={value!r} must be a string or None")
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError(f"prompt={self.prompt!r} and prompt_name={self.prompt_name!r} were both "
                             "given; pass one (prompt is the literal text, prompt_name a key of the "
                             "model folder's sentence-transformers prompts)")
        for name in ("skip_instruction", "enable_bidirectional"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True, False or None")
        if self.skip_instruction and self.pooling == "last":
            raise ValueError(f"skip_instruction=True changes which tokens are pooled, but pooling="
                             f"{self.pooling!r} reads the last token only; use another pooling or "
                             "drop skip_instruction")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")
