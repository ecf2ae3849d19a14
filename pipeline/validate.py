"""Input checks: refuse what cannot run before any work starts, and report rows that cannot be embedded.

Before Ray starts, `check_output_folder` and `check_model` refuse a folder holding files the
pipeline did not write and a model folder that cannot load. In each actor `split_bad_rows`
takes out null, empty and whitespace-only texts. At the end `write_errors_file` builds the
output's `_errors.parquet` (id, shard, row, reason) from the committed shards' error records plus
one pass over the id columns of the parts that lists every row whose id is not unique.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import PipelineConfig

ERRORS_FILE = "_errors.parquet"
DUPLICATE_ID = "duplicate id"
_SHOW = 8  # file names listed in an error message


class BadRowsError(ValueError):
    """A shard holds rows that cannot be embedded and on_bad_row="error"."""


def errors_table(ids: pa.Array, shard_ids, rows, reasons) -> pa.Table:
    """The error-record schema: id (the input's id type, or int64 row), shard, row, reason."""
    return pa.table({"id": ids, "shard": pa.array(shard_ids, pa.string()),
                     "row": pa.array(rows, pa.int64()), "reason": pa.array(reasons, pa.string())})


def split_bad_rows(shard, table: pa.Table, config: PipelineConfig):
    """(rows to embed, their error records as an `errors_table`, keep mask or None if all kept).

    A text is bad when it is null, empty, or only whitespace (pyarrow's utf8_is_space, which
    agrees with str.isspace: spaces, tabs, newlines, U+3000, U+00A0, ...): the engine would
    embed the special tokens alone, a vector that matches nothing. Raises BadRowsError when
    `config.on_bad_row == "error"`.
    """
    null, empty, space = _bad_text(table.column(config.text_column))
    bad = null | empty | space
    id_type = table.schema.field(config.id_column).type if config.id_column else pa.int64()
    if not bad.any():
        return table, errors_table(pa.array([], id_type), [], [], []), None
    index = np.flatnonzero(bad)
    rows = shard.row_offset + index
    ids = table.column(config.id_column).take(pa.array(index)).combine_chunks() \
        if config.id_column else pa.array(rows, pa.int64())
    column = config.text_column
    reasons = [f"text column {column!r} is null" if null[i] else f"text column {column!r} is empty"
               if empty[i] else f"text column {column!r} is whitespace only" for i in index]
    errors = errors_table(ids, [shard.id] * len(index), rows, reasons)
    if config.on_bad_row == "error":
        raise BadRowsError(
            f"{shard.describe()}: {len(index)} row(s) cannot be embedded, first at row {rows[0]} "
            f"(id {ids[0].as_py()!r}): {reasons[0]}; clean the input, or pass on_bad_row='record' "
            "(--on-bad-row record) to list such rows in _errors.parquet and go on")
    return table.filter(pa.array(~bad)), errors, ~bad


def _bad_text(text) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(null, empty, whitespace-only) masks of a text column."""
    if text.type == pa.null():
        text = text.cast(pa.large_string())
    null = pc.is_null(text).to_numpy(zero_copy_only=False)
    empty = pc.fill_null(pc.equal(pc.utf8_length(text), 0), False).to_numpy(zero_copy_only=False)
    space = pc.fill_null(pc.utf8_is_space(text), False).to_numpy(zero_copy_only=False)
    return null, empty, space


def embeddable_texts(table: pa.Table, column: str) -> list[str]:
    """The texts of `column` that `split_bad_rows` would keep (for samples, e.g. int8 calibration)."""
    null, empty, space = _bad_text(table.column(column))
    return table.column(column).filter(pa.array(~(null | empty | space))).to_pylist()


def duplicate_id_errors(ids: pa.Array, shards: pa.Array, rows: pa.Array) -> pa.Table:
    """An `errors_table` listing every row whose id occurs more than once (every occurrence);
    `shards` holds each row's shard index (int32), `rows` its global input row (int64).

    Memory: the three columns of the whole output at once plus pyarrow's hash table of the
    distinct ids (group_by): a measured peak of about 140 bytes per row for 16-character string
    ids (280 MB for 2 million rows), all in the driver.
    """
    if len(ids) == 0:
        return errors_table(ids, [], [], [])
    counts = pa.table({"id": ids}).group_by("id").aggregate([("id", "count")])
    repeated = counts.filter(pc.greater(counts.column("id_count"), 1)).column("id")
    if len(repeated) == 0:
        return errors_table(ids.slice(0, 0), [], [], [])
    mask = pc.is_in(ids, value_set=repeated.combine_chunks())
    if repeated.null_count:
        mask = pc.or_(pc.fill_null(mask, False), pc.is_null(ids))
    keep = pc.fill_null(mask, False)
    shard_ids = [f"{i:06d}" for i in shards.filter(keep).to_pylist()]  # Shard.id
    return errors_table(ids.filter(keep), shard_ids, rows.filter(keep), [DUPLICATE_ID] * len(shard_ids))


def sort_errors(tables: list[pa.Table]) -> pa.Table:
    """One errors table in input-row order (a run and its resumes give the same table)."""
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by([("row", "ascending"), ("reason", "ascending")]).combine_chunks()


def output_errors(fs: pafs.FileSystem, folder: str, manifest, id_type: pa.DataType | None = None,
                  pass_rows: int | None = None):
    """(errors table, bad-text rows, duplicate-id rows) of every committed shard in `folder`.

    Reads each shard's error file and, when the run has an id column, the `id` column of each
    part (never the embeddings); the global row of an output row is its shard's row range minus
    the shard's bad rows. Without an id column the ids are the global row indices, unique by
    construction, and the id pass is skipped. An output of more than `pass_rows` rows
    (default DUPLICATE_PASS_ROWS) has its ids spilled by hash into buckets of about that many
    rows in a temporary folder, and each bucket is checked alone: the driver's memory is bounded
    by one bucket (~140 bytes per row), at the cost of writing the ids to local disk once.
    """
    from .writer import read_part
    check_ids = manifest.fingerprint.get("id_column") is not None
    total = sum(r["rows"] for r in manifest.shards.values())
    buckets = max(1, -(-total // (pass_rows or DUPLICATE_PASS_ROWS))) if check_ids else 0
    bad = []
    with _IdBuckets(buckets) as spill:
        for shard_id, record, kept in _shard_rows(fs, folder, manifest, bad):
            if check_ids:
                part_ids = read_part(fs, f"{folder}/{record['path']}", ["id"]).column("id").combine_chunks()
                spill.add(part_ids, pa.array(np.full(len(kept), int(shard_id), np.int32)), pa.array(kept))
        duplicates = [duplicate_id_errors(*columns) for columns in spill.buckets()]
    bad_rows = sum(t.num_rows for t in bad)
    duplicates = [d for d in duplicates if d.num_rows]
    if not bad and not duplicates:
        return errors_table(pa.array([], id_type or pa.int64()), [], [], []), 0, 0
    return sort_errors([*bad, *duplicates]), bad_rows, sum(d.num_rows for d in duplicates)


DUPLICATE_PASS_ROWS = 20_000_000  # ids checked at once for repeats: ~2.8 GB of driver memory


def _shard_rows(fs: pafs.FileSystem, folder: str, manifest, bad: list):
    """(shard id, manifest record, global rows of its output rows) per committed shard in order;
    appends each shard's error table to `bad`."""
    for shard_id in sorted(manifest.shards, key=int):
        record = manifest.shards[shard_id]
        start = record["row_offset"]
        kept = np.arange(start, start + record["input_rows"], dtype=np.int64)
        if record.get("errors"):
            shard_bad = pq.read_table(f"{folder}/{record['errors']}", filesystem=fs)
            bad.append(shard_bad)
            kept = np.setdiff1d(kept, shard_bad.column("row").to_numpy(), assume_unique=True)
        yield shard_id, record, kept


class _IdBuckets:
    """(id, shard, row) columns gathered in memory (one bucket), or spilled by id hash into
    `n` Parquet files in a temporary folder so that equal ids always share a bucket."""

    def __init__(self, n: int):
        self.n, self.columns, self.tmp, self.writers = n, [], None, []

    def __enter__(self):
        if self.n > 1:
            import tempfile
            self.tmp = tempfile.TemporaryDirectory(prefix="pipeline-ids-")
        return self

    def __exit__(self, *exc):
        for w in self.writers:
            if w is not None:
                w.close()
        if self.tmp is not None:
            self.tmp.cleanup()

    def add(self, ids: pa.Array, shards: pa.Array, rows: pa.Array) -> None:
        if self.n <= 1:
            self.columns.append((ids, shards, rows))
            return
        table = pa.table({"id": ids, "shard": shards, "row": rows})
        if not self.writers:
            self.writers = [pq.ParquetWriter(f"{self.tmp.name}/{b}.parquet", table.schema)
                            for b in range(self.n)]
        bucket = _bucket_of(ids, self.n)
        order = np.argsort(bucket, kind="stable")
        table = table.take(pa.array(order))
        bounds = np.searchsorted(bucket[order], np.arange(self.n + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            self.writers[b].write_table(table.slice(bounds[b], bounds[b + 1] - bounds[b]))

    def buckets(self):
        """Yield (ids, shards, rows) per bucket."""
        if self.n <= 1:
            if self.columns:
                yield tuple(_concat([c[i] for c in self.columns]) for i in range(3))
            return
        for w in self.writers:
            w.close()
        self.writers = []
        for b in range(self.n):
            path = f"{self.tmp.name}/{b}.parquet"
            if os.path.exists(path):
                t = pq.read_table(path)
                yield t.column("id").combine_chunks(), t.column("shard").combine_chunks(), \
                    t.column("row").combine_chunks()


def _bucket_of(ids: pa.Array, n: int) -> np.ndarray:
    """A stable bucket in [0, n) per id: pandas' hash of the id's text form (so 5 hashes alike
    in every part, with or without nulls); null ids go to bucket 0."""
    import pandas as pd
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = ids.cast(pa.large_string())
    valid = pc.is_valid(ids).to_numpy(zero_copy_only=False)
    out = np.zeros(len(ids), dtype=np.int64)
    if valid.any():
        values = ids.filter(pa.array(valid)).to_numpy(zero_copy_only=False)
        out[valid] = (pd.util.hash_array(values) % np.uint64(n)).astype(np.int64)
    return out


def write_errors_file(fs: pafs.FileSystem, folder: str, manifest) -> tuple[int, int]:
    """Publish `_errors.parquet` (atomically; none when nothing is reported); returns
    (bad-text rows, duplicate-id rows) in the whole output."""
    from .writer import publish
    table, bad_rows, duplicates = output_errors(fs, folder, manifest)
    if table.num_rows:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        publish(fs, folder, ERRORS_FILE, sink.getvalue())
    elif fs.get_file_info(f"{folder}/{ERRORS_FILE}").type == pafs.FileType.File:
        fs.delete_file(f"{folder}/{ERRORS_FILE}")
    return bad_rows, duplicates


def _concat(arrays: list[pa.Array]) -> pa.Array:
    arrays = [a for a in arrays if len(a)] or arrays[:1]
    return pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]


def check_output_folder(fs: pafs.FileSystem, folder: str) -> None:
    """Refuse a folder holding files the pipeline did not write (a fresh run would mix them in,
    and a user's folder must never be taken over). A folder with a manifest is ours: extra
    files there (an index built from it, notes) are left alone and never deleted."""
    from .writer import is_ours
    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise ValueError(f"output {folder!r} is a file, not a folder; pass a folder path")
    if fs.get_file_info(f"{folder}/_manifest.json").type == pafs.FileType.File:
        return
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    foreign = sorted(i.path[len(folder):].lstrip("/") for i in infos
                     if i.is_file and not is_ours(i.path[len(folder):].lstrip("/")))
    if foreign:
        shown = ", ".join(foreign[:_SHOW]) + (f" (and {len(foreign) - _SHOW} more)" if len(foreign) > _SHOW else "")
        raise ValueError(f"output folder {folder!r} holds {len(foreign)} file(s) the pipeline did "
                         f"not write and no _manifest.json: {shown}. Write to a new or empty "
                         "folder (the pipeline never deletes files it did not write)")


def check_model(engine_options: dict) -> None:
    """Open the model folder in the driver, so a missing or unsafe model fails before Ray starts."""
    from workers.model_folder import open_model_folder
    kwargs = {"allow_pickle": True} if engine_options.get("allow_pickle") else {}
    open_model_folder(engine_options.get("model"), **kwargs)
