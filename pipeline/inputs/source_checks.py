"""Checks of the input that name the file (issue 24): a str that names nothing, a file that is
not Parquet, a column whose type differs between the files of a folder, a spans column that
is not a list of integer pairs. Used by `sources.py`.
"""
from __future__ import annotations

import glob
import os

import pyarrow as pa

from ..config import PipelineConfig
from ..errors import InputError, InputNotFoundError
from ..fs import parquet_fragment
from ..redact import redact

_TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
_GLOB_CHARS = set("*?[")


def check_input_string(data) -> None:
    """InputNotFoundError for a str input that is no existing file or folder, matches no glob
    and is no URI: most often a text passed alone, which the path-first reading would otherwise
    answer with "output= is required for file inputs" (issue 24)."""
    if not isinstance(data, str) or "://" in data:
        return
    path = os.path.expanduser(data)
    if os.path.exists(path) or (_GLOB_CHARS.intersection(path) and glob.glob(path, recursive=True)):
        return
    shown = data if len(data) <= 60 else data[:57] + "..."
    text_like = " " in data.strip() or not any(c in data for c in "/\\.")
    raise InputNotFoundError(
        f"input {shown!r} does not exist" + (
            ": a str is read as a Parquet file, folder, glob or URI, and this one names none. To "
            f"embed texts, pass a list of strings, e.g. pipeline.run([{shown!r}])" if text_like else ""))


def footer(fs, path: str, size: int | None = None):
    """The file's Parquet footer (`size`: the file's, from the listing; then reading it is one
    GET of the object's end, no HEAD); InputError naming the file when it is not Parquet (a text
    file named .parquet, a truncated or corrupt file) or cannot be opened."""
    try:
        fragment = parquet_fragment(fs, path, size)
        fragment.ensure_complete_metadata()
        return fragment.metadata
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read the input file {redact(path)} as Parquet: {reason(e)}; "
                         "remove or replace it (or move it out of the input folder)") from None


def reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_column_types(source, config: PipelineConfig) -> None:
    """InputError naming both files when a column the run reads has another type in a later
    file (string and large_string count as one): refused now, not as a failing shard."""
    first = source.schemas[0]
    for path, other in zip(source.paths[1:], source.schemas[1:]):
        for name in config.input_columns:
            want, got = first.field(name).type, other.field(name).type
            if want != got and not (want in _TEXT_TYPES and got in _TEXT_TYPES):
                raise InputError(f"column {name!r} is {got} in Parquet file {redact(path)} but "
                                 f"{want} in {redact(source.paths[0])}; all input files must "
                                 "share one schema")


def check_spans_type(spans_type: pa.DataType, column: str, where: str) -> None:
    """A spans column is a list of [char_start, char_end] integer lists."""
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if spans_type == pa.null() or (any(f(spans_type) for f in lists) and any(f(spans_type.value_type) for f in lists)
                                   and pa.types.is_integer(spans_type.value_type.value_type)):
        return
    raise InputError(f"spans column {column!r} of the input {where} has type {spans_type}; it must "
                     "hold each text's chunks as a list of [char_start, char_end] integer pairs "
                     "(list<list<int64>>), or drop spans_column (--spans-column) to cut chunks by "
                     "chunk_tokens")
