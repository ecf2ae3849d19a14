"""The finish step (docs/DESIGN.md step 7): the reported rows, the final statistics, the summary.

With an output folder it removes what no committed shard owns, builds `_errors.parquet` (each
shard's bad rows plus one pass over the parts' id columns listing every row whose id is not
unique; ids spilled by hash into buckets when the output is large, so the driver's memory stays
bounded) before the manifest says complete, and prints the summary. In memory the same id pass
runs over the ids the actors returned. Both end in the `RunResult` that `pipeline.run` returns.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .progress import RunStats, summary_line, summary_table
from ..inputs.validate import errors_table
from . import writer
from .output_folder import ERRORS_FILE, OutputFolder

DUPLICATE_ID = "duplicate id"


@dataclass(frozen=True)
class RunResult:
    """What `pipeline.run` returns.

    Attributes:
        output: the output folder (None when the vectors came back in memory).
        stats: a `RunStats` (rows, tokens, seconds, tokens_per_s, per-worker, truncated, bad rows).
        manifest: the output's manifest as a dict (None without an output folder).
        embeddings: task="embed" with no output folder: an (n, dim) float32 array in input
            order (bad rows are NaN); else None — use `pipeline.read_embeddings(result.output)`.
        errors: with no output folder, the reported rows as {"id", "shard", "row", "reason"}
            dicts in row order (bad texts, and rows whose id repeats); else in the output's
            `_errors.parquet`.
        scores: task="score" with no output folder: (n,) float32 in input order (bad rows
            NaN); else None — use `pipeline.read_scores(result.output)`.
        logits, labels: task="classify" with no output folder: (n, num_labels) float32 (bad
            rows NaN) and the argmax's label name per row (None for bad rows); else None.
        tokens: task="tokens" / "bge-m3" with no output folder: one float32 (L_i, d) array of
            token vectors per row (None for bad rows); else None — use `pipeline.read_tokens`.
        sparse: task="sparse" / "bge-m3" with no output folder: one (indices int32, values
            float32) pair per row (None for bad rows); else None — use `pipeline.read_sparse`.
        chunks: task="chunks" with no output folder: per row its chunks as (char_start,
            char_end, float32 vector) (None for bad rows); else None — `pipeline.read_embeddings`
            reads the chunk rows (`id, chunk, char_start, char_end, embedding`).
        (task="bge-m3" also fills `embeddings` with its dense vectors.)
    """

    output: str | None
    stats: RunStats
    manifest: dict | None
    embeddings: np.ndarray | None = None
    errors: tuple = ()
    scores: np.ndarray | None = None
    logits: np.ndarray | None = None
    labels: list | None = None
    tokens: list | None = None
    sparse: list | None = None
    chunks: list | None = None


def finish(stats: RunStats, collector, manifest, folder: OutputFolder | None, config,
           first_rows: str | None = None) -> RunResult:
    """Report bad rows and duplicate ids (`_errors.parquet`, written before the manifest says
    complete), mark the manifest complete, print the summary, build the result. `first_rows`:
    for a task with several output rows per input row, the column whose 0 marks a row's first."""
    if manifest:
        folder.remove_strays(keep=manifest.files())  # e.g. the part of an actor that died
        bad_rows, duplicates = write_errors_file(folder, manifest, first_rows)  # before reporting it
        stats = dataclasses.replace(stats, bad_rows_total=bad_rows, duplicate_ids=duplicates)
        manifest.finish(stats.to_dict())
        manifest.save(force=True)
        errors = ()
    else:
        errors, duplicates = memory_errors(collector.parts, config.id_column is not None)
        stats = dataclasses.replace(stats, bad_rows_total=stats.bad_rows, duplicate_ids=duplicates)
    if config.progress or (config.progress is None and folder is not None):
        print(summary_table(stats, str(folder) if folder else None, config.output_format, config.task),
              flush=True)
    elif config.progress is None:  # in memory, by default: a notebook cell gets one line
        print(summary_line(stats, config.task), flush=True)
    return RunResult(output=folder.location if folder else None, stats=stats,
                     manifest=manifest.data if manifest else None, errors=tuple(errors),
                     **(collector.results() if folder is None else {}))


def memory_errors(parts: dict, check_ids: bool) -> tuple[list[dict], int]:
    """In-memory run: (bad rows and, with an id column, rows of repeated ids, as dicts in row
    order; the number of repeated-id rows). `parts`: shard index -> (shard, outputs, bad-row
    dicts, ids) as the actors returned them."""
    parts = [parts[k] for k in sorted(parts)]
    bad = [e for _, _, errors, _ in parts for e in errors]
    if not check_ids or not parts:
        return sorted(bad, key=lambda e: e["row"]), 0
    ids = pa.concat_arrays([p[3] for p in parts])
    shard_ids = pa.array(np.concatenate([np.full(len(p[3]), p[0].index, np.int32) for p in parts]))
    rows = pa.array(np.concatenate([kept_rows(s, errors) for s, _, errors, _ in parts]))
    duplicates = duplicate_id_errors(ids, shard_ids, rows).to_pylist()
    return sorted(bad + duplicates, key=lambda e: (e["row"], e["reason"])), len(duplicates)


def kept_rows(shard, errors: list[dict]) -> np.ndarray:
    """Global rows of a shard's embedded rows: its range minus its bad rows."""
    rows = np.arange(shard.row_offset, shard.row_offset + shard.num_rows, dtype=np.int64)
    return np.setdiff1d(rows, [e["row"] for e in errors]) if errors else rows


def duplicate_id_errors(ids: pa.Array, shards: pa.Array, rows: pa.Array) -> pa.Table:
    """An `errors_table` listing every row whose id occurs more than once (every occurrence);
    `shards` holds each row's shard index (int32), `rows` its global input row (int64).

    Memory: the three columns of the whole output at once plus pyarrow's hash table of the
    distinct ids (group_by): a measured peak of about 140 bytes per row for 16-character string
    ids (280 MB for 2 million rows), all in the driver.
    """
    if len(ids) == 0:
        return errors_table(ids, [], [], [])
    # mode="all": a null id that repeats is a repeated id too (the default counts non-nulls only).
    counts = pa.table({"id": ids}).group_by("id").aggregate([("id", "count", pc.CountOptions(mode="all"))])
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


def output_errors(folder: OutputFolder, manifest, id_type: pa.DataType | None = None,
                  pass_rows: int | None = None, first_rows: str | None = None):
    """(errors table, bad-text rows, duplicate-id rows) of every committed shard in `folder`.

    Reads each shard's error file and, when the run has an id column, the `id` column of each
    part (never the embeddings); the global row of an output row is its shard's row range minus
    the shard's bad rows. Without an id column the ids are the global row indices, unique by
    construction, and the id pass is skipped. An output of more than `pass_rows` rows
    (default DUPLICATE_PASS_ROWS) has its ids spilled by hash into buckets of about that many
    rows in a temporary folder, and each bucket is checked alone: the driver's memory is bounded
    by one bucket (~140 bytes per row), at the cost of writing the ids to local disk once.
    With `first_rows` (a column whose 0 marks an input row's first output row: chunk outputs),
    only those output rows are read, one per input row.
    """
    check_ids = manifest.fingerprint.get("id_column") is not None
    total = sum(r["rows"] for r in manifest.shards.values())
    buckets = max(1, -(-total // (pass_rows or DUPLICATE_PASS_ROWS))) if check_ids else 0
    bad = []
    with _IdBuckets(buckets) as spill:
        for shard_id, record, kept in _shard_rows(folder, manifest, bad):
            if check_ids:
                part_ids = _input_row_ids(folder, record["path"], first_rows)
                spill.add(part_ids, pa.array(np.full(len(kept), int(shard_id), np.int32)), pa.array(kept))
        duplicates = [duplicate_id_errors(*columns) for columns in spill.buckets()]
    bad_rows = sum(t.num_rows for t in bad)
    duplicates = [d for d in duplicates if d.num_rows]
    if not bad and not duplicates:
        return errors_table(pa.array([], id_type or pa.int64()), [], [], []), 0, 0
    return sort_errors([*bad, *duplicates]), bad_rows, sum(d.num_rows for d in duplicates)


def _input_row_ids(folder: OutputFolder, path: str, first_rows: str | None) -> pa.Array:
    """The `id` of each input row of a part: every row's, or the rows where `first_rows` is 0."""
    if first_rows is None:
        return folder.read_part(path, ["id"]).column("id").combine_chunks()
    table = folder.read_part(path, ["id", first_rows])
    return table.filter(pc.equal(table.column(first_rows), 0)).column("id").combine_chunks()


DUPLICATE_PASS_ROWS = 20_000_000  # ids checked at once for repeats: ~2.8 GB of driver memory


def _shard_rows(folder: OutputFolder, manifest, bad: list):
    """(shard id, manifest record, global rows of its output rows) per committed shard in order;
    appends each shard's error table to `bad`."""
    for shard_id in sorted(manifest.shards, key=int):
        record = manifest.shards[shard_id]
        start = record["row_offset"]
        kept = np.arange(start, start + record["input_rows"], dtype=np.int64)
        if record.get("errors"):
            shard_bad = folder.read_part(record["errors"])
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


def write_errors_file(folder: OutputFolder, manifest, first_rows: str | None = None) -> tuple[int, int]:
    """Publish `_errors.parquet` (atomically; none when nothing is reported); returns
    (bad-text rows, duplicate-id rows) in the whole output."""
    table, bad_rows, duplicates = output_errors(folder, manifest, first_rows=first_rows)
    if table.num_rows:
        folder.publish(ERRORS_FILE, writer.encode(table, "parquet"))
    elif folder.exists(ERRORS_FILE):
        folder.remove([ERRORS_FILE])
    return bad_rows, duplicates


def _concat(arrays: list[pa.Array]) -> pa.Array:
    arrays = [a for a in arrays if len(a)] or arrays[:1]
    return pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
