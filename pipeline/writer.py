"""Output parts: one Parquet (or Arrow IPC) file per shard, written whole and published atomically.

A part is built in memory, hashed, written under a hidden temporary name and renamed into place
(on object stores the rename is a server-side copy: the final object appears whole or not at all).
Part names carry a per-attempt token, so a late write from an orphaned actor can never replace a
committed part; the manifest names exactly which file holds each shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import quantize

FINGERPRINT_KEY = b"pipeline.fingerprint"
ERRORS_DIR = "_errors"
_EXTENSIONS = {"parquet": ".parquet", "arrow": ".arrow"}
# Everything the pipeline may leave in an output folder; nothing else is ever deleted there.
_OURS = re.compile(r"^(part-\d+-[0-9a-f]+\.(parquet|arrow)|\.part-.*\.tmp|_manifest\.json(\.[0-9a-f]+\.tmp)?"
                   r"|_errors\.parquet|_errors/\d+-[0-9a-f]+\.(jsonl|parquet))$")


class OutputWriteError(OSError):
    """Writing an output file failed (disk full, permissions); nothing of it was published."""


def resolve_output(output: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local folder or a pyarrow filesystem URI such as s3://bucket/run."""
    output = os.fspath(output)
    if "://" in output:
        return pafs.FileSystem.from_uri(output)
    return pafs.LocalFileSystem(), os.path.abspath(output)


def embedding_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, width) stored values as `fixed_size_list<float32|float16|int8|uint8>[width]`,
    zero-copy when they already have that dtype (int8/ubinary: pass `quantize.encode`'s output)."""
    np_dtype = quantize.STORED_DTYPES[dtype]
    flat = np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), vectors.shape[1])


def part_table(ids: pa.Array, vectors: np.ndarray, extra: pa.Table | None, dtype: str,
               fingerprint: dict, quant: dict | None = None) -> pa.Table:
    """The output schema: `id`, `embedding`, then pass-through columns; metadata carries the
    fingerprint and, given `quant` (a `quantize.record`), the quantization used to encode `vectors`."""
    stored = quantize.encode(vectors, quant) if quant else vectors
    columns = {"id": ids, "embedding": embedding_array(stored, dtype)}
    if extra is not None:
        columns.update({name: extra.column(name) for name in extra.column_names})
    metadata = {FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)}
    if quant:
        metadata[quantize.QUANT_KEY] = json.dumps(quant, sort_keys=True)
    return pa.table(columns).replace_schema_metadata(metadata)


def write_part(fs: pafs.FileSystem, folder: str, shard_id: str, table: pa.Table, fmt: str) -> dict:
    """Publish `table` as a new part of shard `shard_id`; returns its manifest record."""
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    else:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    data = sink.getvalue()
    name = f"part-{shard_id}-{uuid.uuid4().hex[:12]}{_EXTENSIONS[fmt]}"
    publish(fs, folder, name, data, owner=f"shard {shard_id}")
    return {"path": name, "rows": table.num_rows, "bytes": data.size,
            "sha256": hashlib.sha256(data).hexdigest()}


def write_errors(fs: pafs.FileSystem, folder: str, shard_id: str, errors: pa.Table) -> str:
    """Publish the bad rows of one shard (a `validate.errors_table`) as Parquet under `_errors/`;
    returns the relative path. `_errors.parquet` is built from these files when the run ends."""
    name = f"{ERRORS_DIR}/{shard_id}-{uuid.uuid4().hex[:12]}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(errors, sink)
    try:
        fs.create_dir(f"{folder}/{ERRORS_DIR}", recursive=True)
    except OSError as e:
        raise OutputWriteError(f"shard {shard_id}: cannot create {folder}/{ERRORS_DIR} ({e}); fix "
                               "the output folder, then rerun to resume") from e
    publish(fs, folder, name, sink.getvalue(), owner=f"shard {shard_id}")
    return name


def read_part(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """One part, Parquet or Arrow IPC by its extension."""
    if path.endswith(".arrow"):
        with fs.open_input_file(path) as f:
            table = pa.ipc.open_file(f).read_all()
        return table.select(columns) if columns else table
    return pq.read_table(path, filesystem=fs, columns=columns)


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


def stray_files(fs: pafs.FileSystem, folder: str, keep: set[str]) -> list[str]:
    """Files the pipeline wrote in `folder` that `keep` (relative paths) does not name."""
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    out = []
    for info in infos:
        if not info.is_file:
            continue
        rel = info.path[len(folder):].lstrip("/")
        if is_ours(rel) and rel not in keep and rel != "_manifest.json":
            out.append(rel)
    return sorted(out)


def is_ours(rel: str) -> bool:
    """Whether a path relative to an output folder is a name the pipeline writes."""
    return bool(_OURS.match(rel))


def publish(fs: pafs.FileSystem, folder: str, name: str, data: pa.Buffer, owner: str = "") -> None:
    """Write `data` to a hidden temporary file, then rename it to `name`: the file appears whole
    or not at all. On failure the temporary is removed and OutputWriteError names the file."""
    tmp = f"{folder}/.part-{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, f"{folder}/{name}")
    except OSError as e:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass  # never created, or the folder itself is gone: nothing to remove
        prefix = f"{owner}: " if owner else ""
        raise OutputWriteError(f"{prefix}writing {folder}/{name} failed ({e}); nothing "
                               "was published: free space or fix the output folder, then rerun "
                               "to resume") from e
