"""Pipeline tasks: for each engine task, the columns it reads, how an actor calls the engine,
the output columns of a part and the in-memory result. A new task is a new row of TASKS.

| task     | reads                       | engine call                      | part columns after `id`                                  | RunResult (in memory)       |
|----------|-----------------------------|----------------------------------|----------------------------------------------------------|-----------------------------|
| embed    | text_column                 | `Engine.embed(texts)`            | embedding `fixed_size_list<float32/float16/int8/uint8>[w]` | `.embeddings` (n, dim)      |
| score    | text_column, pair_column    | `Engine.score(zip(texts, pairs))` | score `float32`                                          | `.scores` (n,)              |
| classify | text_column                 | `Engine.classify(texts)`         | logits `fixed_size_list<float32>[num_labels]`, label `string` | `.logits` (n, L), `.labels` |

Pass-through columns follow in every part. A bad row (null, empty or whitespace-only text in
any column the task reads) gets NaN values (None labels) in memory and no output row on disk.
`label` is the `id2label` name of the largest logit. Only `embed` has stored-precision options
(`output_dtype`) and an int8 calibration; the other tasks store float32 as the engine returns it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from .errors import InputError

NAN_FILL, NONE_FILL = "nan", "none"


@dataclass(frozen=True)
class Column:
    """One output column: its name, the RunResult field holding it in memory, and its form there
    ("matrix": float32 (n, width); "vector": float32 (n,); "text": list of str)."""

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
    quantized: bool = False                           # output_dtype and its calibration apply

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _embed(engine, texts):
    return {"embedding": engine.embed(texts[0])}


def _score(engine, texts):
    return {"score": engine.score(list(zip(texts[0], texts[1])))}


def _classify(engine, texts):
    logits = engine.classify(texts[0])
    names = np.asarray(engine.labels, dtype=object)
    return {"logits": logits, "label": names[logits.argmax(1)] if len(logits) else names[:0]}


def _embedding_arrays(values, dtype, quant):
    from . import quantize, writer  # writer -> quantize -> shards -> sources -> config -> here
    vectors = values["embedding"]
    stored = quantize.encode(vectors, quant) if quant else vectors
    return {"embedding": writer.embedding_array(stored, dtype)}


def _score_arrays(values, dtype, quant):
    return {"score": pa.array(np.asarray(values["score"], dtype=np.float32))}


def _classify_arrays(values, dtype, quant):
    from .writer import embedding_array
    return {"logits": embedding_array(values["logits"], "float32"),
            "label": pa.array(list(values["label"]), pa.string())}


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("embed", (Column("embedding", "embeddings", "matrix"),), False, _embed,
         _embedding_arrays, quantized=True),
    Task("score", (Column("score", "scores", "vector"),), True, _score, _score_arrays),
    Task("classify", (Column("logits", "logits", "matrix"), Column("label", "labels", "text")),
         False, _classify, _classify_arrays),
)}


def check_task(task: str, pair_column: str | None, output_dtype: str) -> Task:
    """The Task for a pipeline config's (task, pair_column, output_dtype); InputError if they
    do not fit together."""
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
    if not spec.quantized and output_dtype != "float32":
        raise InputError(f"output_dtype={output_dtype!r} applies to task='embed' only; task={task!r} "
                         "stores float32 values as the engine returns them: drop output_dtype "
                         "(--output-dtype)")
    return spec


def memory_results(task: Task, parts: list[tuple[np.ndarray, dict]], total_rows: int,
                   width: int) -> dict:
    """RunResult fields of an in-memory run: each output column over all `total_rows` input rows
    in order, NaN (None for text) where a row was bad. `parts`: (global rows, values) per shard."""
    out = {}
    for col in task.columns:
        if col.form == "text":
            full = np.full(total_rows, None, dtype=object)
        else:
            shape = (total_rows, width) if col.form == "matrix" else (total_rows,)
            full = np.full(shape, np.nan, dtype=np.float32)
        for rows, values in parts:
            full[rows] = values[col.name]
        out[col.attribute] = full.tolist() if col.form == "text" else full
    return out
