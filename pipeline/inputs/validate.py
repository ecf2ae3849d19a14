"""Input checks: refuse a model that cannot load before Ray starts, and find rows that cannot be embedded.

`check_model` opens the model folder in the driver (the output folder is checked by
`OutputFolder.check_usable`). In each actor `split_bad_rows` takes out null, empty and
whitespace-only texts and returns their records in the `errors_table` schema; the finish step
(`finish.py`) gathers those records and adds the rows whose id repeats.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers import EngineConfig, folder_task, preflight_fingerprint

from ..config import PipelineConfig
from ..errors import BadRowsError, InputError

log = logging.getLogger(__name__)


def errors_table(ids: pa.Array, shard_ids, rows, reasons) -> pa.Table:
    """The error-record schema: id (the input's id type, or int64 row), shard, row, reason."""
    return pa.table({"id": ids, "shard": pa.array(shard_ids, pa.string()),
                     "row": pa.array(rows, pa.int64()), "reason": pa.array(reasons, pa.string())})


def split_bad_rows(shard, table: pa.Table, config: PipelineConfig):
    """(rows to embed, their error records as an `errors_table`, keep mask or None if all kept).

    A text is bad when it is null, empty, or only whitespace (pyarrow's utf8_is_space, which
    agrees with str.isspace: spaces, tabs, newlines, U+3000, U+00A0, ...): the engine would
    embed the special tokens alone, a vector that matches nothing. With pairs (task="score")
    a row is bad when either column's text is; its reason names every bad column. Raises
    BadRowsError when `config.on_bad_row == "error"`.
    """
    reasons_by_column = [_reasons(table.column(c), c) for c in config.text_columns]
    if config.spans_column:  # task="chunks": the caller's chunk spans must fit their text
        reasons_by_column.append(_span_reasons(table, config.text_column, config.spans_column))
    bad = np.logical_or.reduce([r.astype(bool) for r in reasons_by_column])  # None -> False
    id_type = table.schema.field(config.id_column).type if config.id_column else pa.int64()
    if not bad.any():
        return table, errors_table(pa.array([], id_type), [], [], []), None
    index = np.flatnonzero(bad)
    rows = shard.row_offset + index
    ids = table.column(config.id_column).take(pa.array(index)).combine_chunks() \
        if config.id_column else pa.array(rows, pa.int64())
    reasons = ["; ".join(r[i] for r in reasons_by_column if r[i] is not None) for i in index]
    errors = errors_table(ids, [shard.id] * len(index), rows, reasons)
    if config.on_bad_row == "error":
        raise BadRowsError(
            f"{shard.describe()}: {len(index)} row(s) cannot be embedded, first at row {rows[0]} "
            f"(id {ids[0].as_py()!r}): {reasons[0]}; clean the input, or pass on_bad_row='record' "
            "(--on-bad-row record) to list such rows in _errors.parquet and go on")
    return table.filter(pa.array(~bad)), errors, ~bad


def _reasons(text, column: str) -> np.ndarray:
    """Per row, why its text in `column` is bad (object array; None where it is fine)."""
    null, empty, space = _bad_text(text)
    out = np.full(len(null), None, dtype=object)
    out[space] = f"text column {column!r} is whitespace only"
    out[empty] = f"text column {column!r} is empty"
    out[null] = f"text column {column!r} is null"
    return out


def _span_reasons(table: pa.Table, text_column: str, column: str) -> np.ndarray:
    """Per row, why its chunk spans are bad: null, empty, or a span that is not an integer
    pair 0 <= start < end <= len(text) (object array; None where they are fine)."""
    texts, spans = table.column(text_column).to_pylist(), table.column(column).to_pylist()
    out = np.full(len(spans), None, dtype=object)
    for i, (text, pairs) in enumerate(zip(texts, spans)):
        if pairs is None or not len(pairs):
            out[i] = f"spans column {column!r} is {'null' if pairs is None else 'empty'}"
            continue
        length = len(text or "")
        for k, pair in enumerate(pairs):
            ok = pair is not None and len(pair) == 2 and all(isinstance(x, int) for x in pair)
            if not ok or not 0 <= pair[0] < pair[1] <= length:
                out[i] = (f"spans column {column!r}: span {k} {pair!r} is not a pair of character "
                          f"offsets 0 <= start < end <= {length} (the text's length)")
                break
    return out


def _bad_text(text) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(null, empty, whitespace-only) masks of a text column."""
    if text.type == pa.null():
        text = text.cast(pa.large_string())
    null = pc.is_null(text).to_numpy(zero_copy_only=False)
    empty = pc.fill_null(pc.equal(pc.utf8_length(text), 0), False).to_numpy(zero_copy_only=False)
    space = pc.fill_null(pc.utf8_is_space(text), False).to_numpy(zero_copy_only=False)
    return null, empty, space


def bad_text_mask(text) -> np.ndarray:
    """True where a text column's value is null, empty or whitespace-only (not embedded)."""
    null, empty, space = _bad_text(text)
    return null | empty | space


def embeddable_texts(table: pa.Table, column: str) -> list[str]:
    """The texts of `column` that `split_bad_rows` would keep (for samples, e.g. int8 calibration)."""
    null, empty, space = _bad_text(table.column(column))
    return table.column(column).filter(pa.array(~(null | empty | space))).to_pylist()


def check_model(engine_options: dict) -> dict:
    """Everything the engine would refuse at start-up that the model folder's files and the
    options already show (`workers.preflight`: a missing or unsafe folder, a module or key the
    engine does not implement, a task the folder cannot serve, max_length past the positions),
    before Ray starts, as InputError (exit 2). Returns the part of the engine's fingerprint
    that the folder and options decide (`workers.preflight_fingerprint`; may be empty)."""
    try:
        return preflight_fingerprint(EngineConfig(**{**engine_options,
                                                      "allow_pickle": bool(engine_options.get("allow_pickle"))}))[1]
    except FileNotFoundError:
        raise
    except ValueError as e:
        raise InputError(f"model {engine_options.get('model') or '(bundled all-MiniLM-L6-v2)'}: {e}") from None


def default_task(model, allow_pickle: bool = False) -> str:
    """The task the model folder's kind names ("embed" for the bundled model, a URI, or a path
    this machine does not have); a folder that cannot be read is left for `check_model`."""
    try:
        task = folder_task(model, allow_pickle)
    except (OSError, ValueError):
        return "embed"
    if task is not None:
        log.info("task=%r: what the model folder %s is (pass task= to choose another)", task, model)
    return task or "embed"
