"""The finish step (docs/DESIGN.md step 7): the reported rows, the final statistics, the summary.

With an output folder it removes what no committed shard owns, builds `_errors.parquet` (each
shard's bad rows plus one pass over the ids of every committed shard listing every row whose id
is not unique) before the manifest says complete, and prints the summary. The ids of the shards
this driver committed come from the local spool their actors filled (`id_spool.py`); the other
parts' `id` columns are read, a few ahead. The pass is a DuckDB query, its memory capped by
DuckDB's memory_limit and the rest spilled to a temporary folder. In memory the same id pass
runs over the ids the actors returned. Both end in the `RunResult` that `pipeline.run` returns.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..inputs.validate import errors_table
from . import writer
from .id_spool import ID_COLUMNS, IdSpool, rows_batch
from .output_folder import ERRORS_FILE, OutputFolder
from .progress import RunStats, summary_line, summary_table

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
        spool = collector.spool if collector is not None else None  # the run's own shards' ids
        try:
            bad_rows, duplicates = write_errors_file(folder, manifest, first_rows, spool)  # before reporting it
        finally:
            if spool is not None:
                spool.close()
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
    """An `errors_table` listing every row whose id occurs more than once (every occurrence), in
    row order; `shards` holds each row's shard index (int32), `rows` its global input row (int64).
    In memory (the in-memory run's ids are all in the driver already); the same DuckDB query as
    the output folder's pass."""
    batch = pa.record_batch([ids, shards.cast(pa.int32()), rows.cast(pa.int64())],
                            names=list(ID_COLUMNS))
    return repeated_ids(pa.RecordBatchReader.from_batches(batch.schema, [batch]))[0]


def sort_errors(tables: list[pa.Table]) -> pa.Table:
    """One errors table in input-row order (a run and its resumes give the same table)."""
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by([("row", "ascending"), ("reason", "ascending")]).combine_chunks()


def output_errors(folder: OutputFolder, manifest, id_type: pa.DataType | None = None,
                  memory_limit: str | None = None, threads: int | None = None,
                  stats: dict | None = None, first_rows: str | None = None,
                  spool: IdSpool | None = None):
    """(errors table, bad-text rows, duplicate-id rows) of every committed shard in `folder`.

    Reads each shard's error file and, when the run has an id column, the `id` column of each
    part (never the embeddings), one part at a time; the global row of an output row is its
    shard's row range minus the shard's bad rows. Without an id column the ids are the global
    row indices, unique by construction, and the id pass is skipped. The (id, shard, row)
    stream goes to DuckDB (`repeated_ids`): its memory is capped by `memory_limit` (default
    DUPLICATE_PASS_MEMORY), past which it spills to a temporary folder. `stats`, when given, is
    filled with the pass's figures (`repeated_ids`). With `first_rows` (a column whose 0 marks
    an input row's first output row: chunk outputs), only those output rows are read, one per
    input row. `spool`: the ids of the shards this driver committed (`id_spool.py`), taken
    from there instead of from their parts.
    """
    check_ids = manifest.fingerprint.get("id_column") is not None
    bad = []
    shard_rows = _shard_rows(folder, manifest, bad)
    duplicates = None
    if check_ids:
        spooled = {int(k) for k in spool.shards} & {int(k) for k in manifest.shards} if spool else set()
        batches = _id_batches(folder, shard_rows, first_rows, spool, spooled)
        first = next(batches, None)
        if first is not None:
            reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))
            duplicates, figures = repeated_ids(reader, memory_limit, threads)
            if stats is not None:
                stats.update(figures)
    for _ in shard_rows:  # the error files of the shards (all of them, when the pass was skipped)
        pass
    bad_rows = sum(t.num_rows for t in bad)
    duplicates = [duplicates] if duplicates is not None and duplicates.num_rows else []
    if not bad and not duplicates:
        return errors_table(pa.array([], id_type or pa.int64()), [], [], []), 0, 0
    return sort_errors([*bad, *duplicates]), bad_rows, sum(d.num_rows for d in duplicates)


# DuckDB's memory_limit for the duplicate-id pass: past it the pass spills to a temporary folder
# (tempfile's, e.g. $TMPDIR) instead of growing: ~33 bytes per row of 16-character ids (10^7 ids
# spilled 325 MB under a 256 MB limit).
DUPLICATE_PASS_MEMORY = "2GB"
# The ids are read once into a table DuckDB manages (spilled past its memory limit) beside a
# 64-bit hash of each; the hashes are grouped, the rows whose hash occurs more than once are the
# candidates (a semi join), and among them the ids that really repeat are found the same way on
# the ids themselves (hash collisions drop out there; a null id that repeats is a repeated id
# too: DuckDB's hash of NULL is a value, and the last join is IS NOT DISTINCT FROM). Grouping
# 8-byte hashes instead of the id strings: at 10^7 16-character ids, ~1.05 s against ~1.3 s
# for the same group + semi join on the ids (docs/SCALE.md).
_HASH = "hash(id)"  # tests narrow it (e.g. `hash(id) % 4`) to check that collisions drop out
_COPY = "CREATE TEMP TABLE all_ids AS SELECT {hash} AS h, id, shard, row FROM ids"
_CANDIDATES = ("CREATE TEMP TABLE candidates AS SELECT a.id, a.shard, a.row FROM all_ids a SEMI JOIN "
               "(SELECT h FROM all_ids GROUP BY h HAVING count(*) > 1) d USING (h)")
_REPEATED = ("SELECT c.id, c.shard, c.row FROM candidates c SEMI JOIN "
             "(SELECT id FROM candidates GROUP BY id HAVING count(*) > 1) d ON c.id IS NOT DISTINCT FROM d.id")
# Parts whose id column is being read ahead of DuckDB's scan (threads: on an object store each
# read waits on requests; on disk the Parquet decoding of the next parts overlaps the copy).
READ_AHEAD = 4


def repeated_ids(reader: pa.RecordBatchReader, memory_limit: str | None = None,
                 threads: int | None = None) -> tuple[pa.Table, dict]:
    """(an `errors_table` of the rows of `reader` — batches of (id, shard int32, row int64) —
    whose id occurs more than once, every occurrence, in row order; the pass's figures).

    DuckDB reads `reader` once into a table with each id's hash, groups the hashes, and finds
    the rows of the ids that occur more than once among those of the repeated hashes (a null id
    that repeats is a repeated id too). DuckDB holds at most `memory_limit` (default DUPLICATE_PASS_MEMORY)
    and spills the rest to a temporary folder, removed at the end; `threads` (default: one per
    core). Figures: seconds, spilled_bytes (DuckDB's peak temporary-folder size),
    peak_memory_bytes (its peak buffer memory).
    """
    id_type = reader.schema.field("id").type
    limit = memory_limit or DUPLICATE_PASS_MEMORY
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pipeline-ids-") as tmp:
        config = {"memory_limit": limit, "temp_directory": tmp, "preserve_insertion_order": False}
        con = duckdb.connect(config={**config, **({"threads": threads} if threads else {})})
        try:
            con.execute("SET enable_profiling='no_output'")
            con.register("ids", reader)
            con.execute(_COPY.format(hash=_HASH))
            con.execute(_CANDIDATES)
            found = con.sql(_REPEATED).to_arrow_table()
            system = json.loads(con.get_profiling_information(format="json")).get("system", {})
        except duckdb.OutOfMemoryException as e:
            raise MemoryError(f"the duplicate-id pass needs more than its memory_limit {limit!r}: pass "
                              "a larger one (finish.DUPLICATE_PASS_MEMORY) or fewer threads") from e
        finally:
            con.close()
    found = {name: column.combine_chunks() for name, column in zip(found.column_names, found.sort_by("row").columns)}
    shard_ids = pc.utf8_lpad(found["shard"].cast(pa.string()), 6, "0")  # Shard.id
    table = errors_table(found["id"].cast(id_type), shard_ids, found["row"],
                         [DUPLICATE_ID] * len(shard_ids))
    figures = {"seconds": time.perf_counter() - t0, "spilled_bytes": system.get("peak_temp_dir_size", 0),
               "peak_memory_bytes": system.get("peak_buffer_memory", 0)}
    return table.combine_chunks(), figures


def _id_batches(folder: OutputFolder, shard_rows, first_rows: str | None = None,
                spool: IdSpool | None = None, spooled: set = frozenset()):
    """(id, shard, row) record batches of every committed shard, when DuckDB asks for them: the
    spool's for the shards in `spooled` (committed by this driver), then one per other part,
    read from the output folder in shard order, the next READ_AHEAD parts' id columns on
    threads meanwhile. Every batch's ids are cast to the first's type (an all-null part's ids
    have type null)."""
    kept = (b for b in spool.batches() if b.num_rows == 0 or b.column(1)[0].as_py() in spooled) if spooled else ()
    id_type = None
    for batch in itertools.chain(kept, _part_batches(folder, shard_rows, first_rows, spooled)):
        id_type = id_type or batch.column(0).type
        if batch.column(0).type != id_type:
            batch = pa.record_batch([batch.column(0).cast(id_type), *batch.columns[1:]], names=list(ID_COLUMNS))
        yield batch


def _part_batches(folder: OutputFolder, shard_rows, first_rows: str | None, skip: set):
    """One (id, shard, row) batch per committed part whose shard index is not in `skip`."""
    with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="id-pass") as pool:
        pending = collections.deque()
        shards = (s for s in shard_rows if int(s[0]) not in skip)
        while True:
            for shard_id, record, kept in itertools.islice(shards, READ_AHEAD + 1 - len(pending)):
                pending.append((shard_id, kept, pool.submit(_input_row_ids, folder, record, first_rows)))
            if not pending:
                return
            shard_id, kept, future = pending.popleft()
            ids = future.result()
            yield rows_batch(ids, int(shard_id), kept)


def _input_row_ids(folder: OutputFolder, record: dict, first_rows: str | None) -> pa.Array:
    """The `id` of each input row of a part: every row's, or the rows where `first_rows` is 0.
    The part's size is its record's, so a Parquet part costs 2 GETs (its footer, the columns'
    chunks) and no HEAD."""
    path, size = record["path"], record.get("bytes")
    if first_rows is None:
        return folder.read_part(path, ["id"], size).column("id").combine_chunks()
    table = folder.read_part(path, ["id", first_rows], size)
    return table.filter(pc.equal(table.column(first_rows), 0)).column("id").combine_chunks()


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


def write_errors_file(folder: OutputFolder, manifest, first_rows: str | None = None,
                      spool: IdSpool | None = None) -> tuple[int, int]:
    """Publish `_errors.parquet` (atomically; none when nothing is reported); returns
    (bad-text rows, duplicate-id rows) in the whole output. `spool`: see `output_errors`."""
    table, bad_rows, duplicates = output_errors(folder, manifest, first_rows=first_rows, spool=spool)
    if table.num_rows:
        folder.publish(ERRORS_FILE, writer.encode(table, "parquet"))
    elif folder.exists(ERRORS_FILE):
        folder.remove([ERRORS_FILE])
    return bad_rows, duplicates
