"""Output parts: the schema of a part and its encodings (Parquet, Arrow IPC), in memory.

A part holds `id`, the task's output columns (embed: `embedding`
`fixed_size_list<float32|float16|int8|uint8>[width]`; score: `score` float32; classify:
`logits` `fixed_size_list<float32>[num_labels]` and `label` string; tokens: `tokens`
`list<fixed_size_list<float16|float32>[d]>` and `num_tokens` int32; sparse: `indices`
`list<int32>` and `values` `list<float32>`; bge-m3: all of these; see `pipeline/tasks.py`) and
the pass-through columns; its schema metadata carries the run fingerprint and, for quantized
outputs, the quantization record. A part is built and encoded whole in memory, so it can be
hashed and published in one piece by `OutputFolder.publish_part`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..fs import parquet_fragment
from ..redact import redact
from . import quantize

FINGERPRINT_KEY = b"pipeline.fingerprint"


def embedding_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, width) stored values as `fixed_size_list<float32|float16|int8|uint8>[width]`,
    zero-copy when they already have that dtype (int8/ubinary: pass `quantize.encode`'s output)."""
    np_dtype = quantize.STORED_DTYPES[dtype]
    flat = np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), vectors.shape[1])


def token_arrays(tokens: list[np.ndarray], width: int, dtype: str) -> dict[str, pa.Array]:
    """One (L_i, width) array per row -> `tokens` `list<fixed_size_list<dtype>[width]>` (float16
    or float32) and `num_tokens` int32 (L_i), built from one flat buffer."""
    np_dtype = quantize.STORED_DTYPES[dtype]
    counts = np.fromiter((len(t) for t in tokens), dtype=np.int32, count=len(tokens))
    flat = np.concatenate(tokens).astype(np_dtype, copy=False) if tokens else np.empty((0, width), np_dtype)
    if flat.ndim != 2 or flat.shape[1] != width:
        raise ValueError(f"token vectors of shape {flat.shape} are not {width} wide")
    offsets = np.zeros(len(tokens) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)
    return {"tokens": pa.ListArray.from_arrays(pa.array(offsets), vectors),
            "num_tokens": pa.array(counts)}


def sparse_arrays(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, pa.Array]:
    """One (indices, values) pair per row -> `indices` `list<int32>`, `values` `list<float32>`."""
    counts = np.fromiter((len(i) for i, _ in pairs), dtype=np.int32, count=len(pairs))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts, dtype=np.int32)]).astype(np.int32))
    indices = np.concatenate([i for i, _ in pairs]).astype(np.int32, copy=False) if pairs else np.empty(0, np.int32)
    values = np.concatenate([v for _, v in pairs]).astype(np.float32, copy=False) if pairs else np.empty(0, np.float32)
    return {"indices": pa.ListArray.from_arrays(offsets, pa.array(indices)),
            "values": pa.ListArray.from_arrays(offsets, pa.array(values))}


def ragged_numpy(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A `list<...>` column as (flat values, offsets (n+1,) int64): the values of a
    `list<fixed_size_list>[d]` as an (N, d) matrix, of a `list<number>` as (N,); row i is
    `values[offsets[i]:offsets[i+1]]`. Zero-copy when the column is one chunk without nulls."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    item = column.type.value_type
    values, offsets, base = [], [np.zeros(1, np.int64)], 0
    for chunk in chunks:
        off = chunk.offsets.to_numpy().astype(np.int64)
        offsets.append(off[1:] - off[0] + base)
        base += int(off[-1] - off[0])
        flat = chunk.flatten()
        values.append(flat.flatten().to_numpy(zero_copy_only=False) if pa.types.is_fixed_size_list(item)
                      else flat.to_numpy(zero_copy_only=False))
    width = item.list_size if pa.types.is_fixed_size_list(item) else None
    if values:
        flat = values[0] if len(values) == 1 else np.concatenate(values)
    else:
        flat = np.empty(0, dtype=(item.value_type if width else item).to_pandas_dtype())
    return (flat.reshape(-1, width) if width else flat), np.concatenate(offsets)


def ragged_rows(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """A `list<...>` column as one NumPy array per row (views of one flat buffer)."""
    values, offsets = ragged_numpy(column)
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def part_table(ids: pa.Array, vectors: np.ndarray, extra: pa.Table | None, dtype: str,
               fingerprint: dict, quant: dict | None = None) -> pa.Table:
    """The embedding part: `id`, `embedding`, then pass-through columns; metadata carries the
    fingerprint and, given `quant` (a `quantize.record`), the quantization used to encode `vectors`."""
    stored = quantize.encode(vectors, quant) if quant else vectors
    return task_part(ids, {"embedding": embedding_array(stored, dtype)}, extra, fingerprint, quant)


def task_part(ids: pa.Array, outputs: dict[str, pa.Array], extra: pa.Table | None,
              fingerprint: dict, quant: dict | None = None) -> pa.Table:
    """A part of any task: `id`, the task's output columns (`pipeline/tasks.py`: `embedding`;
    `score`; `logits`, `label`; `tokens`, `num_tokens`; `indices`, `values`), then pass-through
    columns; metadata as in `part_table`."""
    columns = {"id": ids, **outputs}
    if extra is not None:
        columns.update({name: extra.column(name) for name in extra.column_names})
    metadata = {FINGERPRINT_KEY: redact(json.dumps(fingerprint, sort_keys=True))}
    if quant:
        metadata[quantize.QUANT_KEY] = json.dumps(quant, sort_keys=True)
    return pa.table(columns).replace_schema_metadata(metadata)


def _encode_parquet(table: pa.Table, sink) -> None:
    pq.write_table(table, sink)


def _encode_arrow(table: pa.Table, sink) -> None:
    with pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)


def _read_parquet(fs: pafs.FileSystem, path: str, columns, size: int | None = None) -> pa.Table:
    if size is not None:  # no HEAD: one GET of the footer, then the GET(s) of `columns`' chunks
        return parquet_fragment(fs, path, size).to_table(columns=columns)
    # Opened here, not by path: pq.read_table(path, filesystem=) asks an object store for the
    # object's info three times (3 HEAD requests on S3), this once.
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)


def _read_arrow(fs: pafs.FileSystem, path: str, columns, size: int | None = None) -> pa.Table:
    # One HEAD, then footer and batches (pyarrow's dataset reader of Arrow IPC files, which could
    # take the size, reads each buffer apart: more GETs than this).
    with fs.open_input_file(path) as f:
        table = pa.ipc.open_file(f).read_all()
    return table.select(columns) if columns else table


@dataclass(frozen=True)
class PartFormat:
    """One file format of parts: its extension, how to encode a table, how to read a file."""

    extension: str
    encode: Callable[[pa.Table, object], None]
    read: Callable[[pafs.FileSystem, str, list | None, int | None], pa.Table]


FORMATS = {"parquet": PartFormat(".parquet", _encode_parquet, _read_parquet),
           "arrow": PartFormat(".arrow", _encode_arrow, _read_arrow)}
_BY_EXTENSION = {f.extension: f for f in FORMATS.values()}


def encode(table: pa.Table, fmt: str) -> pa.Buffer:
    """`table` as the bytes of one `fmt` file ("parquet" or "arrow")."""
    sink = pa.BufferOutputStream()
    FORMATS[fmt].encode(table, sink)
    return sink.getvalue()


def read(fs: pafs.FileSystem, path: str, columns: list[str] | None = None,
         size: int | None = None) -> pa.Table:
    """One part file, its format chosen by its extension (Parquet when it has no known one).
    `size`: the file's, when known (a manifest record's `bytes`): a Parquet part is then opened
    without asking an object store for it."""
    fmt = _BY_EXTENSION.get(os.path.splitext(path)[1], FORMATS["parquet"])
    return fmt.read(fs, path, columns, size)


def to_numpy(table: pa.Table, column: str = "embedding", dequantize: bool = False) -> np.ndarray:
    """The embedding column as an (n, width) NumPy matrix of the stored values (zero-copy when
    it is one chunk); `dequantize=True`: float32 (n, dim), int8 decoded with the calibration
    and ubinary unpacked using the quantization record in the table's schema metadata."""
    col = table.column(column)
    dim = col.type.list_size
    chunks = [c.flatten() for c in col.chunks]
    if not chunks:
        matrix = np.zeros((0, dim), dtype=col.type.value_type.to_pandas_dtype())
    else:
        flat = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
        matrix = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
    if not dequantize:
        return matrix
    quant = quantize.from_metadata(table.schema.metadata)
    if quant is None and col.type.value_type in (pa.int8(), pa.uint8()):
        raise ValueError(f"column {column!r} holds {col.type.value_type} codes but the table has no "
                         f"{quantize.QUANT_KEY.decode()!r} schema metadata to decode them; read "
                         "the parts with pipeline.read_embeddings(folder, dequantize=True)")
    return quantize.decode(matrix, quant)
