"""The Ray actor that hosts one engine: reads its shard's rows, embeds them, writes the part.

DESIGN.md places the actor class in `workers/actor.py`; it lives here because `workers/` is the
engine's package and this class is the pipeline's side of the contract (it only calls
`Engine.embed`, `.stats`, `.fingerprint()` and `.dim`).

The actor runs two calls at once (`max_concurrency=2`): while one call holds the engine, the
other reads its rows, so the engine never waits for I/O between shards (the "prefetched shard").
Writing a part also happens outside the engine lock, overlapping the next shard's compute.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from .config import PipelineConfig
from .shards import Shard, read_shard
from .writer import part_table, write_errors, write_part


class BadRowsError(ValueError):
    """A shard holds rows that cannot be embedded (null text) and skip_bad_rows is off."""


class EmbedWorker:
    """One engine in one Ray actor. Wrapped with `ray.remote` by the driver (see `driver.py`)."""

    def __init__(self, engine_config, config: PipelineConfig, output, threads: int | None):
        if threads:
            # The tokenizer's Rust pool would otherwise start one thread per core of the node,
            # oversubscribing the cores reserved for this actor (FACTS.md: deadly with torch).
            os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
        from workers import Engine
        self.engine = Engine(engine_config)
        self.config, self._sources = config, {}
        self.fs, self.folder = output if output is not None else (None, None)
        self.lock = threading.Lock()
        self._fingerprint = {"engine": self.engine.fingerprint(), **config.fingerprint()}

    def fingerprint(self) -> dict:
        """The run fingerprint as this actor's engine sees it (model hash, pooling, dims, ...)."""
        return self._fingerprint

    def info(self) -> dict:
        return {"pid": os.getpid(), "dim": self.engine.dim, "node": os.uname().nodename}

    def process(self, source_box: list, shard: Shard) -> dict:
        """Embed one shard; write its part (or return the vectors when there is no output folder).

        `source_box` is `[ObjectRef(Source)]`: boxed so Ray passes the reference, fetched once per
        actor (and again after a restart) instead of being a constructor argument.
        """
        t0 = time.perf_counter()
        source = self._source(source_box[0])
        table = read_shard(source, shard, self.config.input_columns)
        good, errors = self._split_bad_rows(shard, table)
        texts = good.column(self.config.text_column).to_pylist()
        t1 = time.perf_counter()
        with self.lock:
            before = self.engine.stats
            tokens0, truncated0 = before.tokens, before.truncated
            start = time.perf_counter()
            vectors = self.engine.embed(texts)
            seconds = time.perf_counter() - start
            after = self.engine.stats
        record = {"rows": good.num_rows, "tokens": after.tokens - tokens0,
                  "truncated": after.truncated - truncated0, "bad_rows": len(errors),
                  "embed_seconds": seconds, "read_seconds": t1 - t0, "pid": os.getpid()}
        ids = self._ids(shard, table, good)
        extra = good.select(list(self.config.passthrough_columns)) if self.config.passthrough_columns else None
        if self.folder is None:
            record.update(ids=ids, vectors=vectors, extra=extra, errors_list=errors)
            return record
        t2 = time.perf_counter()
        part = part_table(ids, vectors, extra, self.config.output_dtype, self._fingerprint)
        record.update(write_part(self.fs, self.folder, shard.id, part, self.config.output_format))
        if errors:
            record["errors"] = write_errors(self.fs, self.folder, shard.id, errors)
        record["write_seconds"] = time.perf_counter() - t2
        return record

    def _source(self, ref):
        key = ref.hex()
        if key not in self._sources:
            self._sources = {key: ray.get(ref)}  # one run at a time: drop the previous source
        return self._sources[key]

    def _ids(self, shard: Shard, table: pa.Table, good: pa.Table) -> pa.Array:
        if self.config.id_column is not None:
            return good.column(self.config.id_column).combine_chunks()
        rows = np.arange(shard.row_offset, shard.row_offset + shard.num_rows, dtype=np.int64)
        if good.num_rows != table.num_rows:
            rows = rows[self._valid_mask(table)]
        return pa.array(rows)

    def _valid_mask(self, table: pa.Table) -> np.ndarray:
        valid = pc.is_valid(table.column(self.config.text_column))
        return valid.to_numpy(zero_copy_only=False)

    def _split_bad_rows(self, shard: Shard, table: pa.Table) -> tuple[pa.Table, list[dict]]:
        """(rows to embed, [{"row", "id", "reason"}] for null texts); raises unless skipping bad rows."""
        if table.column(self.config.text_column).null_count == 0:
            return table, []
        valid = self._valid_mask(table)
        bad = np.flatnonzero(~valid)
        id_col = self.config.id_column
        ids = table.column(id_col).take(pa.array(bad)).to_pylist() if id_col else None
        records = [{"row": int(shard.row_offset + r), "id": ids[i] if ids else int(shard.row_offset + r),
                    "reason": f"text column {self.config.text_column!r} is null"}
                   for i, r in enumerate(bad)]
        if not self.config.skip_bad_rows:
            first = records[0]
            raise BadRowsError(
                f"{shard.describe()}: {len(records)} row(s) have a null text, first at row "
                f"{first['row']} (id {first['id']!r}); clean the input or pass skip_bad_rows=True "
                "(--skip-bad-rows) to record them in _errors/ and go on")
        return table.filter(pa.array(valid)), records
