"""The part-size bound of token-level outputs: rows per shard so one part stays under
`max_part_bytes` (issue 13: a multi-vector row is ~100x a dense vector).

The plan is made before any actor loads the model, so a row's size is estimated from the model
folder, for the worst case: every text at max_length tokens,

    tokens:  max_length x d x bytes per value                  (d: the token projection's width,
                                                                 else the hidden size)
    bge-m3:  max_length x H x bytes per value + 4 H + 8 max_length   (colbert <= H wide, dense,
                                                                 sparse pairs)

plus `ROW_OVERHEAD` bytes (id, list offsets, num_tokens). The formulas are the Task rows'
`row_bytes` (pipeline/tasks.py); this module finds the shape they take. max_length is the engine option, else
the folder's (sentence-transformers max_seq_length, a multi-vector folder's document length,
else the model's positions), as the engine resolves it. Real passages are usually shorter, so
parts come out smaller than the bound; lower max_length or raise max_part_bytes for larger ones.
A folder this machine cannot open (a cluster whose nodes hold it) is estimated at
`FALLBACK_LENGTH` x `FALLBACK_WIDTH`.
"""
from __future__ import annotations

import logging
import os

from workers import token_row_shape

from ..tasks import TASKS
from .quantize import STORED_DTYPES

log = logging.getLogger("pipeline")
ROW_OVERHEAD = 64
FALLBACK_LENGTH, FALLBACK_WIDTH = 512, 1024


def row_bytes(task: str, output_dtype: str, engine_options: dict) -> int | None:
    """Worst-case bytes of one output row of `task`; None for tasks whose rows are small."""
    estimate = TASKS[task].row_bytes
    if estimate is None:
        return None
    max_length, width, hidden = _row_shape(engine_options)
    return estimate(max_length, width, hidden, STORED_DTYPES[output_dtype]().itemsize) + ROW_OVERHEAD


def bounded_rows(rows: int, max_part_bytes: int | None, per_row: int | None) -> int:
    """`rows` per shard, lowered so rows x per_row <= max_part_bytes (at least one row)."""
    if not max_part_bytes or not per_row:
        return rows
    bound = max(1, max_part_bytes // per_row)
    if bound < rows:
        log.info("token output: %d rows per shard (at most %d bytes per row, %d bytes per part)",
                 bound, per_row, max_part_bytes)
    return min(rows, bound)


def _row_shape(engine_options: dict) -> tuple[int, int, int]:
    """(max_length, token vector width, hidden size) of the folder as the engine will run it."""
    model = engine_options.get("model")
    if model and not os.path.exists(os.path.expanduser(model)):
        length = engine_options.get("max_length") or FALLBACK_LENGTH
        return length, FALLBACK_WIDTH, FALLBACK_WIDTH
    return token_row_shape(model, engine_options.get("max_length"), bool(engine_options.get("allow_pickle")))
