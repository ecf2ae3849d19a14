"""Incremental runs (`pipeline.run(..., reuse="out/previous")`): copy the output rows of a
previous run whose content hash (`pipeline/output/content_hash.py`) this run's input has, embed
the rest.

Driver, at plan time (`prepare`): the previous output must be complete and its fingerprint equal
this run's in everything that decides the stored values (the engine's fingerprint: model hash,
dtype, pooling, dimensions, prompt, ...; the output precision; the task's own entries); the
column names and the file format may differ. Then one DuckDB join, out of core (an on-disk
database in a temporary folder, `memory_limit` bounded), matches the hashes of the new input
(computed by DuckDB from the text columns, read shard by shard) against the previous parts'
`content_hash` column and writes the reuse plan, `_reuse_plan.parquet` in the new output folder:
(row, part, prow) for each new input row that a previous row holds (the first such previous row),
sorted by `row` in row groups of `PLAN_GROUP` rows. No Python object per row is made.

Actor, per shard (`ShardReuse`): reads only its rows' slice of the plan (row-group statistics
prune the rest), embeds the other rows, and copies the reused rows' output columns from the
previous parts with `take` (Arrow level: stored values are copied bit for bit, int8 codes
included, because the new output keeps the previous output's quantization record). `id`,
pass-through columns and the content hash come from the new input, so the new output is
complete and self-contained; the plan is deleted when the run finishes.
"""
from __future__ import annotations

import logging
import os
import tempfile

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FingerprintMismatch, InputError
from ..inputs.shards import read_shard
from ..inputs.sources import text_as_string
from ..output.content_hash import HASH_COLUMN, sql_expression
from ..output.manifest import Manifest, fingerprint_diff
from ..output.output_folder import OutputFolder

log = logging.getLogger("pipeline")
PLAN_NAME = "_reuse_plan.parquet"
PLAN_GROUP = 65536
MISMATCH = ("refuse", "ignore")
# Fingerprint entries that name columns or the file format: they do not change a stored value.
_FORM_KEYS = ("text_column", "id_column", "passthrough_columns", "output_format", "pair_column",
              "spans_column")
_PLAN_SCHEMA = pa.schema([("row", pa.int64()), ("part", pa.int32()), ("prow", pa.int64())])


def part_paths(manifest: Manifest) -> list[str]:
    """The previous output's parts in shard order: the plan's `part` indexes this list."""
    return [r["path"] for _, r in manifest.records()]


def open_previous(location, output: OutputFolder, task) -> tuple[OutputFolder, Manifest]:
    """The previous output (folder, manifest); InputError when it cannot be reused."""
    previous = OutputFolder.open(location)
    if previous.location == output.location:
        raise InputError(f"reuse={str(previous)!r} is the output folder itself; reuse names the "
                         "output of an earlier run, write this one to a new folder")
    if task.output_rows is not None:
        raise InputError(f"reuse= does not apply to task={task.name!r} (several output rows per "
                         "input row); drop reuse (--reuse)")
    manifest = Manifest.load(previous)
    if manifest is None:
        raise InputError(f"reuse={str(previous)!r} has no _manifest.json: not the output of "
                         "pipeline.run; pass the folder of an earlier run's output")
    if not manifest.data.get("complete"):
        raise InputError(f"reuse={str(previous)!r}: the run writing it has not finished; finish it "
                         "first (rerun it with the same output)")
    return previous, manifest


def vector_fingerprint(fingerprint: dict) -> dict:
    """The fingerprint entries that decide the stored values (not column names or file format)."""
    return {k: v for k, v in fingerprint.items() if k not in _FORM_KEYS}


def check_fingerprint(previous: OutputFolder, manifest: Manifest, fingerprint: dict,
                      mismatch: str) -> list[str]:
    """The differences between the previous output's values and this run's; raises
    FingerprintMismatch naming them unless `mismatch="ignore"` (then nothing is reused)."""
    diffs = fingerprint_diff(vector_fingerprint(manifest.fingerprint), vector_fingerprint(fingerprint))
    if diffs and mismatch != "ignore":
        raise FingerprintMismatch(
            f"reuse={str(previous)!r} holds vectors of different settings, so its rows cannot be "
            "copied into this run:\n  " + "\n  ".join(d.replace(" in the output,", " there,") for d in diffs)
            + "\nReuse an output made with this run's settings, drop reuse (--reuse), or pass "
            "reuse_mismatch='ignore' (--reuse-ignore-mismatch) to embed every row.")
    if diffs:
        log.warning("reuse=%s: different settings (%s); every row is embedded", previous, "; ".join(diffs))
    return diffs


def build_plan(previous: OutputFolder, manifest: Manifest | None, output: OutputFolder, source,
               shards, config, prompt: str, memory_limit: str = "1GB") -> dict:
    """Write `_reuse_plan.parquet` to `output` (empty when `manifest` is None: nothing reused);
    return {"previous", "previous_rows", "planned", "dropped"}."""
    counts = {"previous": str(previous), "previous_rows": 0, "planned": 0, "dropped": 0}
    writer = pq.ParquetWriter(output.file(PLAN_NAME), _PLAN_SCHEMA, filesystem=output.fs)
    try:
        if manifest is not None:
            with tempfile.TemporaryDirectory(prefix="reuse-") as tmp:
                counts.update(_join(previous, manifest, source, shards, config, prompt, tmp,
                                    memory_limit, writer))
    finally:
        writer.close()
    return counts


def _join(previous, manifest, source, shards, config, prompt, tmp, memory_limit, writer) -> dict:
    con = duckdb.connect(os.path.join(tmp, "reuse.duckdb"))
    try:
        con.execute(f"SET memory_limit='{memory_limit}'; SET temp_directory='{tmp}'; "
                    "SET preserve_insertion_order=false")
        con.execute("CREATE TABLE prev (h BLOB, key BIGINT); CREATE TABLE new (row BIGINT, h BLOB)")
        for i, path in enumerate(part_paths(manifest)):
            try:
                table = previous.read_part(path, [HASH_COLUMN])
            except (KeyError, pa.ArrowInvalid):
                raise InputError(f"{previous.show(path)} has no {HASH_COLUMN!r} column: the output was "
                                 "written before incremental runs existed; run once without reuse "
                                 "(--reuse) and reuse that output next time") from None
            batch = pa.table({"h": table.column(HASH_COLUMN),  # key: part in the high 32 bits
                              "key": pa.array((np.int64(i) << 32) + np.arange(table.num_rows, dtype=np.int64))})
            con.register("batch", batch)
            con.execute("INSERT INTO prev SELECT h::BLOB, key FROM batch")
            con.unregister("batch")
        columns = list(config.text_columns)
        names = [f"t{j}" for j in range(len(columns))]
        expr = sql_expression(prompt, names)
        for shard in shards:
            table = text_as_string(read_shard(source, shard, columns), config)
            batch = pa.table({**{n: table.column(c) for n, c in zip(names, columns)},
                              "row": pa.array(np.arange(shard.row_offset, shard.row_offset + shard.num_rows,
                                                        dtype=np.int64))})
            con.register("batch", batch)
            con.execute(f"INSERT INTO new SELECT row, {expr} FROM batch")
            con.unregister("batch")
        result = con.sql(
            "SELECT n.row AS row, CAST(k.key >> 32 AS INTEGER) AS part, k.key & 4294967295 AS prow "
            "FROM new n JOIN (SELECT h, min(key) AS key FROM prev GROUP BY h) k ON n.h = k.h ORDER BY n.row")
        planned = 0
        for b in result.to_arrow_reader(PLAN_GROUP):
            b = pa.RecordBatch.from_arrays([b.column(i).cast(f.type) for i, f in enumerate(_PLAN_SCHEMA)],
                                           schema=_PLAN_SCHEMA)
            writer.write_batch(b, row_group_size=PLAN_GROUP)
            planned += b.num_rows
        total = con.execute("SELECT count(*) FROM prev").fetchone()[0]
        dropped = con.execute("SELECT count(*) FROM prev p ANTI JOIN new n ON p.h = n.h").fetchone()[0]
        return {"previous_rows": int(total), "planned": planned, "dropped": int(dropped)}
    finally:
        con.close()


class PreviousParts:
    """The actor's side: a shard's slice of the plan and the previous rows it names."""

    def __init__(self, location: str, output: OutputFolder, names: tuple[str, ...]):
        self.previous, self.output, self.names = OutputFolder.open(location), output, list(names)
        self.paths = part_paths(Manifest.load(self.previous))
        self._cache: dict[int, pa.Table] = {}  # the last two parts read: a shard spans one or two

    def split(self, shard, keep: np.ndarray | None, n_good: int):
        """(reuse mask over the shard's good rows, the reused rows' output columns in their order)."""
        plan = pq.read_table(self.output.file(PLAN_NAME), filesystem=self.output.fs,
                             filters=[("row", ">=", shard.row_offset),
                                      ("row", "<", shard.row_offset + shard.num_rows)])
        local = plan.column("row").to_numpy() - shard.row_offset
        parts, prows = plan.column("part").to_numpy(), plan.column("prow").to_numpy()
        if keep is not None:  # rows left out as bad are never reused
            ok = keep[local]
            local, parts, prows = local[ok], parts[ok], prows[ok]
            local = (np.cumsum(keep) - 1)[local]
        mask = np.zeros(n_good, dtype=bool)
        mask[local] = True
        order = np.argsort(local, kind="stable")
        return mask, self._take(parts[order], prows[order])

    def _take(self, parts: np.ndarray, prows: np.ndarray) -> pa.Table | None:
        if not len(parts):
            return None
        by_part = np.argsort(parts, kind="stable")
        pieces = []
        for p in np.unique(parts):
            table = self._part(int(p))
            pieces.append(table.take(pa.array(prows[parts == p])))
        taken = pa.concat_tables(pieces)
        return taken.take(pa.array(np.argsort(by_part, kind="stable")))

    def _part(self, index: int) -> pa.Table:
        if index not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = self.previous.read_part(self.paths[index], self.names)
        return self._cache[index]


def merge(columns: dict[str, pa.Array], reused: pa.Table | None, mask: np.ndarray) -> dict[str, pa.Array]:
    """The output columns of all good rows: embedded ones (`columns`, rows where `mask` is False)
    and reused ones (`reused`, rows where it is True), in row order, typed as the embedded ones."""
    if reused is None:
        return columns
    n_embedded = int((~mask).sum())
    index = np.empty(len(mask), dtype=np.int64)
    index[~mask] = np.arange(n_embedded)
    index[mask] = n_embedded + np.arange(reused.num_rows)
    out = {}
    for name, array in columns.items():
        other = reused.column(name).combine_chunks()
        if not isinstance(array, pa.Array):
            array = pa.array(array)
        if other.type != array.type:
            other = other.cast(array.type)
        out[name] = pa.concat_arrays([array, other]).take(pa.array(index))
    return out


def check_early(config, output: OutputFolder | None, task) -> None:
    """Refuse a `reuse=` that cannot apply before Ray starts (no output folder, wrong task, a
    previous output that is missing or unfinished)."""
    if config.reuse is None:
        return
    if output is None:
        raise InputError("reuse= copies rows into an output folder: pass output= (--output) too")
    open_previous(config.reuse, output, task)


def prepare(config, task, output: OutputFolder, manifest: Manifest, source, shards,
            fingerprint: dict) -> dict | None:
    """The driver's plan step of a run with `reuse=` (None without): check the previous
    output's fingerprint, keep its quantization record (its int8 codes are copied as they are),
    write the reuse plan and record {"previous", "previous_rows", "planned", "dropped"} in the
    manifest under "reuse"."""
    if config.reuse is None:
        return None
    previous, old = open_previous(config.reuse, output, task)
    diffs = check_fingerprint(previous, old, fingerprint, config.reuse_mismatch)
    if not diffs and "quantization" in old.data and "quantization" not in manifest.data:
        manifest.put("quantization", old.data["quantization"])
    prompt = fingerprint.get("engine", {}).get("prompt") or ""
    counts = build_plan(previous, None if diffs else old, output, source, shards, config, prompt)
    if diffs:
        counts["ignored"] = diffs
    manifest.put("reuse", counts)
    manifest.save(force=True)
    return counts


def finish(manifest: Manifest, output: OutputFolder, counts: dict | None, progress: bool) -> dict | None:
    """After the run: the rows reused / embedded (over every committed shard, resumed ones
    included) and dropped (previous rows whose content is no longer in the input), in the
    manifest's "reuse" entry and its summary; the plan is deleted (also one that a killed
    reuse run left to a resume without `reuse=`)."""
    if counts is None:
        if "reuse" in manifest.data and output.exists(PLAN_NAME):
            output.remove([PLAN_NAME])
        return None
    rows, reused = int(manifest.shards.total("rows")), int(manifest.shards.total("reused"))
    out = {**counts, "reused": reused, "embedded": rows - reused}
    manifest.put("reuse", out)
    manifest.data.setdefault("summary", {})["reuse"] = {k: out[k] for k in ("reused", "embedded", "dropped")}
    manifest.save(force=True)
    if output.exists(PLAN_NAME):
        output.remove([PLAN_NAME])
    if progress:
        print(f"reuse: {reused} rows copied from {counts['previous']}, {rows - reused} embedded, "
              f"{counts['dropped']} of its {counts['previous_rows']} rows dropped", flush=True)
    return out
