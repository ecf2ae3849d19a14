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

FINGERPRINT_KEY = b"pipeline.fingerprint"
ERRORS_DIR = "_errors"
_EXTENSIONS = {"parquet": ".parquet", "arrow": ".arrow"}
# Everything the pipeline may leave in an output folder; nothing else is ever deleted there.
_OURS = re.compile(r"^(part-\d+-[0-9a-f]+\.(parquet|arrow)|\.part-.*\.tmp|_manifest\.json(\.[0-9a-f]+\.tmp)?)$")


def resolve_output(output: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local folder or a pyarrow filesystem URI such as s3://bucket/run."""
    output = os.fspath(output)
    if "://" in output:
        return pafs.FileSystem.from_uri(output)
    return pafs.LocalFileSystem(), os.path.abspath(output)


def embedding_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, dim) vectors as `fixed_size_list<float32|float16>[dim]`, zero-copy for float32."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), vectors.shape[1])


def part_table(ids: pa.Array, vectors: np.ndarray, extra: pa.Table | None, dtype: str,
               fingerprint: dict) -> pa.Table:
    """The output schema: `id`, `embedding`, then pass-through columns; metadata carries the fingerprint."""
    columns = {"id": ids, "embedding": embedding_array(vectors, dtype)}
    if extra is not None:
        columns.update({name: extra.column(name) for name in extra.column_names})
    table = pa.table(columns)
    return table.replace_schema_metadata({FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)})


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
    _publish(fs, folder, name, data)
    return {"path": name, "rows": table.num_rows, "bytes": data.size,
            "sha256": hashlib.sha256(data).hexdigest()}


def write_errors(fs: pafs.FileSystem, folder: str, shard_id: str, records: list[dict]) -> str:
    """Publish the bad rows of one shard as JSON lines under `_errors/`; returns the relative path."""
    fs.create_dir(f"{folder}/{ERRORS_DIR}", recursive=True)
    name = f"{ERRORS_DIR}/{shard_id}-{uuid.uuid4().hex[:12]}.jsonl"
    body = "".join(json.dumps(r, default=str) + "\n" for r in records).encode()
    _publish(fs, folder, name, pa.py_buffer(body))
    return name


def read_part(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """One part, Parquet or Arrow IPC by its extension."""
    if path.endswith(".arrow"):
        with fs.open_input_file(path) as f:
            table = pa.ipc.open_file(f).read_all()
        return table.select(columns) if columns else table
    return pq.read_table(path, filesystem=fs, columns=columns)


def to_numpy(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The embedding column as an (n, dim) NumPy matrix (zero-copy when it is one chunk)."""
    col = table.column(column)
    dim = col.type.list_size
    chunks = [c.flatten() for c in col.chunks]
    if not chunks:
        return np.zeros((0, dim), dtype=col.type.value_type.to_pandas_dtype())
    flat = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
    return flat.to_numpy(zero_copy_only=False).reshape(-1, dim)


def stray_files(fs: pafs.FileSystem, folder: str, keep: set[str]) -> list[str]:
    """Files the pipeline wrote in `folder` that `keep` (relative paths) does not name."""
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    out = []
    for info in infos:
        if not info.is_file:
            continue
        rel = info.path[len(folder):].lstrip("/")
        ours = _OURS.match(rel) or (rel.startswith(ERRORS_DIR + "/") and rel.endswith(".jsonl"))
        if ours and rel not in keep and rel != "_manifest.json":
            out.append(rel)
    return sorted(out)


def _publish(fs: pafs.FileSystem, folder: str, name: str, data: pa.Buffer) -> None:
    tmp = f"{folder}/.part-{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, f"{folder}/{name}")
