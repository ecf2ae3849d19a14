"""Pipeline tasks: for each engine task, the columns it reads, how an actor calls the engine,
the output columns of a part and the in-memory result. A new task is a new row of TASKS.

| task     | reads                       | engine call                      | part columns after `id`                                  | RunResult (in memory)       |
|----------|-----------------------------|----------------------------------|----------------------------------------------------------|-----------------------------|
| embed    | text_column                 | `Engine.embed(texts)`            | embedding `fixed_size_list<float32/float16/int8/uint8>[w]` | `.embeddings` (n, dim)      |
| score    | text_column, pair_column    | `Engine.score(zip(texts, pairs))` | score `float32`                                          | `.scores` (n,)              |
| classify | text_column                 | `Engine.classify(texts)`         | logits `fixed_size_list<float32>[num_labels]`, label `string` | `.logits` (n, L), `.labels` |
| tokens   | text_column                 | `Engine.embed_tokens(texts)`     | tokens `list<fixed_size_list<float16/float32>[d]>`, num_tokens `int32` | `.tokens` [(L_i, d)]  |
| sparse   | text_column                 | `Engine.embed_sparse(texts)`     | indices `list<int32>`, values `list<float32>`            | `.sparse` [(indices, values)] |
| bge-m3   | text_column                 | `Engine.embed_m3(texts)`         | embedding `fixed_size_list<float32>[dim]`, indices, values, tokens, num_tokens | `.embeddings`, `.sparse`, `.tokens` |
| chunks   | text_column (+ spans_column) | `Engine.embed_chunks(texts, spans=)` | one row per chunk: chunk `int32`, char_start `int32`, char_end `int32`, embedding as embed's | `.chunks` [[(char_start, char_end, vector)]] |

Pass-through columns follow in every part. A bad row (null, empty or whitespace-only text in
any column the task reads) gets NaN values (None labels, None tokens / sparse pairs) in memory
and no output row on disk. `label` is the `id2label` name of the largest logit.

task="chunks" writes one output row per chunk (`id` and the pass-through columns repeated
for each chunk of a row; `chunk` counts from 0 in each text); its row's `output_rows` says
which input row each output row comes from, and `first_rows` names the column whose 0 marks a
text's first row (the duplicate-id pass reads those rows only). The chunking mode and sizes
are engine options (`chunking`, `chunk_tokens`, `chunk_overlap`), so they are in the engine's
fingerprint.

Stored precision (`output_dtype`, whose default is the first of the task's choices):
embed and chunks float32 | float16 | int8 (calibrated) | ubinary; tokens and bge-m3 float16 | float32, for
the token vectors only (bge-m3's dense `embedding` and every sparse `values` stay float32);
score, classify and sparse float32 only. In memory every value is float32 as the engine returns it.

Token vectors are the document side: the pipeline embeds passages (`embed_tokens(...,
is_query=False)`: a multi-vector folder's document marker and skip-list), and records
`"side": "document"` in the fingerprint of task="tokens" (its row's `fingerprint`; bge-m3 has
one side). Queries are embedded at search time (`pipeline/index/late_search.py`). Parts of the token
tasks are bounded in bytes: their shards are planned smaller (`pipeline/output/part_size.py`,
`max_part_bytes`, with the row's `row_bytes` estimate).

Every per-task fact lives on the Task row, so nothing else branches on a task's name: the
config's fingerprint adds the row's `fingerprint` pairs, part_size calls its `row_bytes`, and
`pipeline.read_*` accepts an output whose task lists that reader in `readers` (a bge-m3 output
has three readers, each reading `id`, its own column group and the pass-through columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from .errors import InputError
from .output import quantize, writer

NAN_FILL, NONE_FILL = "nan", "none"


@dataclass(frozen=True)
class Column:
    """One in-memory output: its key in the engine call's values, the RunResult field holding it,
    and its form there ("matrix": float32 (n, width); "vector": float32 (n,); "text": list of
    str; "list": a list with one engine value per row, e.g. a (L_i, d) array, None when bad)."""

    name: str
    attribute: str
    form: str


@dataclass(frozen=True)
class Task:
    """What the pipeline does for one engine task (see the table in the module docstring)."""

    name: str
    columns: tuple[Column, ...]
    pair: bool                                        # reads a second text column, pair_column
    compute: Callable[[object, list[list[str]]], dict[str, np.ndarray]]  # engine, texts per column
    arrays: Callable[[dict, str, dict | None], dict[str, pa.Array]]      # values, dtype, quant
    quantized: bool = False                           # int8 calibration applies
    output_dtypes: tuple[str, ...] = ("float32",)     # stored precisions; the first is the default
    stored: tuple[str, ...] = ()                      # part columns, when not the columns' names
    # Worst-case bytes of a row's output columns from (max_length, token width, hidden size,
    # bytes per token value), for tasks whose rows hold token vectors: their parts are bounded
    # (pipeline/output/part_size.py). None: rows are small.
    row_bytes: Callable[[int, int, int, int], int] | None = None
    fingerprint: tuple[tuple[str, str], ...] = ()     # (key, value) pairs the config's fingerprint adds
    # Reader name -> the part columns it reads by default (then `id` first, pass-through last).
    # One reader: None, all columns. Several (an output holding several outputs): their groups.
    readers: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
    # Tasks with several output rows per input row (chunks): the values -> the input row (index
    # into the call's texts) of each output row; None: one output row per input row.
    output_rows: Callable[[dict], np.ndarray] | None = None
    first_rows: str | None = None                     # column whose 0 marks a row's first output row
    # The vectors int8 calibration samples: (engine, texts) -> float32 (n, dim).
    sample: Callable[[object, list[str]], np.ndarray] = lambda engine, texts: engine.embed(texts)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The part's output columns (after `id`)."""
        return self.stored or tuple(c.name for c in self.columns)


def _embed(engine, texts):
    return {"embedding": engine.embed(texts[0])}


def _score(engine, texts):
    return {"score": engine.score(list(zip(texts[0], texts[1])))}


def _classify(engine, texts):
    logits = engine.classify(texts[0])
    names = np.asarray(engine.labels, dtype=object)
    return {"logits": logits, "label": names[logits.argmax(1)] if len(logits) else names[:0]}


def _tokens(engine, texts):
    # The width travels with the values: a shard whose rows are all bad still needs it for the
    # part's schema (every part of an output has the same one).
    return {"tokens": engine.embed_tokens(texts[0], is_query=False), "token_width": engine.dim}


def _sparse(engine, texts):
    return {"sparse": engine.embed_sparse(texts[0])}


def _bge_m3(engine, texts):
    out = engine.embed_m3(texts[0])
    return {"embedding": out["dense"], "sparse": out["sparse"], "tokens": out["colbert"],
            "token_width": engine.head.colbert_linear.out_features}


def _chunks(engine, texts):
    spans = texts[1] if len(texts) > 1 else None  # the spans column, when the config names one
    # The width travels with the values: a shard whose rows are all bad still needs it.
    return {"chunks": engine.embed_chunks(texts[0], spans=spans), "width": engine.dim}


def _chunk_sample(engine, texts):
    chunks = [v for per_text in engine.embed_chunks(texts) for *_, v in per_text]
    return np.stack(chunks) if chunks else np.zeros((0, engine.dim), np.float32)


def _chunk_rows(values):
    counts = [len(c) for c in values["chunks"]]
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def _chunk_arrays(values, dtype, quant):
    chunks = [c for per_text in values["chunks"] for c in per_text]
    spans = np.asarray([(s, e) for s, e, _ in chunks], dtype=np.int32).reshape(-1, 2)
    index = np.concatenate([np.arange(len(c), dtype=np.int32) for c in values["chunks"]] or [np.zeros(0, np.int32)])
    vectors = np.stack([v for *_, v in chunks]) if chunks else np.zeros((0, values["width"]), np.float32)
    return {"chunk": pa.array(index), "char_start": pa.array(spans[:, 0]), "char_end": pa.array(spans[:, 1]),
            **_embedding_arrays({"embedding": vectors}, dtype, quant)}


def _embedding_arrays(values, dtype, quant):
    vectors = values["embedding"]
    stored = quantize.encode(vectors, quant) if quant else vectors
    return {"embedding": writer.embedding_array(stored, dtype)}


def _score_arrays(values, dtype, quant):
    return {"score": pa.array(np.asarray(values["score"], dtype=np.float32))}


def _classify_arrays(values, dtype, quant):
    return {"logits": writer.embedding_array(values["logits"], "float32"),
            "label": pa.array(list(values["label"]), pa.string())}


def _token_arrays(values, dtype, quant):
    return writer.token_arrays(values["tokens"], values["token_width"], dtype)


def _sparse_arrays(values, dtype, quant):
    return writer.sparse_arrays(values["sparse"])


def _bge_m3_arrays(values, dtype, quant):
    return {"embedding": writer.embedding_array(values["embedding"], "float32"),
            **_sparse_arrays(values, dtype, quant), **_token_arrays(values, dtype, quant)}


_TOKEN_DTYPES = ("float16", "float32")


def _token_row_bytes(max_length, width, hidden, value):
    return max_length * width * value


def _bge_m3_row_bytes(max_length, width, hidden, value):
    # colbert vectors (<= hidden wide), the float32 dense vector, (int32, float32) sparse pairs
    return max_length * width * value + 4 * hidden + 8 * max_length


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("embed", (Column("embedding", "embeddings", "matrix"),), False, _embed,
         _embedding_arrays, quantized=True, output_dtypes=("float32", "float16", "int8", "ubinary"),
         readers=(("read_embeddings", None),)),
    Task("score", (Column("score", "scores", "vector"),), True, _score, _score_arrays,
         readers=(("read_scores", None),)),
    Task("classify", (Column("logits", "logits", "matrix"), Column("label", "labels", "text")),
         False, _classify, _classify_arrays, readers=(("read_scores", None),)),
    Task("tokens", (Column("tokens", "tokens", "list"),), False, _tokens, _token_arrays,
         output_dtypes=_TOKEN_DTYPES, stored=("tokens", "num_tokens"), row_bytes=_token_row_bytes,
         fingerprint=(("side", "document"),), readers=(("read_tokens", None),)),
    Task("sparse", (Column("sparse", "sparse", "list"),), False, _sparse, _sparse_arrays,
         stored=("indices", "values"), readers=(("read_sparse", None),)),
    Task("bge-m3", (Column("embedding", "embeddings", "matrix"), Column("sparse", "sparse", "list"),
                    Column("tokens", "tokens", "list")), False, _bge_m3, _bge_m3_arrays,
         output_dtypes=_TOKEN_DTYPES,
         stored=("embedding", "indices", "values", "tokens", "num_tokens"), row_bytes=_bge_m3_row_bytes,
         readers=(("read_embeddings", ("embedding",)), ("read_sparse", ("indices", "values")),
                  ("read_tokens", ("tokens", "num_tokens")))),
    Task("chunks", (Column("chunks", "chunks", "list"),), False, _chunks, _chunk_arrays, quantized=True,
         output_dtypes=("float32", "float16", "int8", "ubinary"),
         stored=("chunk", "char_start", "char_end", "embedding"), readers=(("read_embeddings", None),),
         output_rows=_chunk_rows, first_rows="chunk", sample=_chunk_sample),
)}


def check_task(task: str, pair_column: str | None, output_dtype: str | None) -> Task:
    """The Task for a pipeline config's (task, pair_column, output_dtype); InputError if they
    do not fit together. output_dtype None is the task's default (the first of its choices)."""
    if task not in TASKS:
        raise InputError(f"task={task!r} is not supported; choose one of {list(TASKS)}")
    spec = TASKS[task]
    if spec.pair and pair_column is None:
        raise InputError(f"task={task!r} scores (query, passage) pairs: pass pair_column= "
                         "(--pair-column) naming the passage column; text_column= is the query")
    if not spec.pair and pair_column is not None:
        raise InputError(f"pair_column={pair_column!r} is for task='score' (pairs); task={task!r} "
                         "reads text_column only: drop pair_column or pass task='score'")
    if pair_column is not None and (not isinstance(pair_column, str) or not pair_column):
        raise InputError(f"pair_column={pair_column!r} must be a non-empty column name")
    if output_dtype is not None and output_dtype not in spec.output_dtypes:
        raise InputError(
            f"output_dtype={output_dtype!r} does not apply to task={task!r}, which stores "
            f"{' or '.join(spec.output_dtypes)}; int8 and ubinary are for task='embed' only, "
            "float16 for task='embed', 'tokens' and 'bge-m3' (token vectors): drop output_dtype "
            f"(--output-dtype) or pass one of {list(spec.output_dtypes)}")
    return spec


def memory_results(task: Task, parts: list[tuple[np.ndarray, dict]], total_rows: int,
                   width: int) -> dict:
    """RunResult fields of an in-memory run: each output over all `total_rows` input rows in
    order, NaN (None for text and lists) where a row was bad. `parts`: (global rows, values)
    per shard."""
    out = {}
    for col in task.columns:
        if col.form == "list":  # ragged values (arrays, pairs of arrays): a plain list
            rows_of = [None] * total_rows
            for rows, values in parts:
                for row, value in zip(rows.tolist(), values[col.name]):
                    rows_of[row] = value
            out[col.attribute] = rows_of
            continue
        if col.form == "text":
            full = np.full(total_rows, None, dtype=object)
        else:
            shape = (total_rows, width) if col.form == "matrix" else (total_rows,)
            full = np.full(shape, np.nan, dtype=np.float32)
        for rows, values in parts:
            full[rows] = values[col.name]
        out[col.attribute] = full.tolist() if col.form == "text" else full
    return out
