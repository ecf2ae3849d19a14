"""The ids of the shards this driver committed, kept on local disk for the finish step's id pass.

An actor that writes a part also returns the part's (id, shard, row) batch: its input rows' ids
(one per input row, also for tasks with several output rows per input row) and their global
rows. The driver appends it here when it commits the shard. The finish step then takes those
ids from this spool instead of reading each part back, which on an object store costs 2 GETs
per part (its footer at the object's end, then the id column's chunk at its start). Only the
parts of shards that an earlier, interrupted driver committed are still read back.

The spool is Arrow IPC (zstd) in a temporary folder (tempfile's: $TMPDIR), removed by `close`;
measured 4.2 bytes per row for sequential 16-character ids and 11.6 for random ones (10^9 rows:
4-12 GB on the driver's disk). It dies
with its driver, which is why nothing in it is trusted across runs. A driver that was killed
cannot remove its spool, so the folder's name carries the driver's pid and a new spool removes
those of drivers no longer running on this machine. Writing it is best effort:
if the disk refuses (full, removed), the spool is dropped with one warning and the finish step
reads every part, as without it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

log = logging.getLogger("pipeline")

PREFIX = "pipeline-id-spool-"
ID_COLUMNS = ("id", "shard", "row")  # the batches of the id pass: id, shard index int32, global row int64


def id_batch(ids: pa.Array, shard, keep: np.ndarray | None) -> pa.RecordBatch:
    """The id pass's batch of a shard: `ids` of its embedded input rows, `keep` the mask of
    those among the shard's rows (None: all of them)."""
    rows = np.arange(shard.row_offset, shard.row_offset + shard.num_rows, dtype=np.int64)
    return rows_batch(ids, shard.index, rows if keep is None else rows[keep])


def rows_batch(ids: pa.Array, shard_index: int, rows: np.ndarray) -> pa.RecordBatch:
    """(id, shard, row) of one shard's rows: `rows` their global input rows (int64)."""
    return pa.record_batch([ids, pa.array(np.full(len(rows), shard_index, np.int32)), pa.array(rows)],
                           names=list(ID_COLUMNS))


_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class IdSpool:
    """(id, shard, row) record batches of committed shards, in local Arrow IPC files."""

    def __init__(self):
        self.shards: set[str] = set()  # shard ids whose batch is here
        self._dir: Path | None = None
        self._files: list[Path] = []
        self._sink = self._writer = self._schema = None
        self._failed = False

    def add(self, shard_id: str, batch: pa.RecordBatch) -> None:
        """Keep a committed shard's batch. A batch whose schema differs from the current file's
        (an all-null id column's type, say) starts a new file; the reader casts them."""
        if self._failed:
            return
        try:
            if self._writer is None or not batch.schema.equals(self._schema):
                self._open(batch.schema)
            self._writer.write_batch(batch)
            self.shards.add(shard_id)
        except OSError as e:
            log.warning("the ids of the committed shards could not be kept on local disk (%s); "
                        "the finish step reads them back from the parts", e)
            self._failed = True
            self.shards.clear()
            self.close()

    def batches(self):
        """Every kept batch, file by file (memory-mapped, read as asked for)."""
        self._close_writer()
        for path in self._files:
            with pa.memory_map(str(path)) as source:
                yield from pa.ipc.open_stream(source)

    def close(self) -> None:
        """Remove the spool's files."""
        self._close_writer()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir, self._files = None, []

    def _open(self, schema: pa.Schema) -> None:
        self._close_writer()
        if self._dir is None:
            remove_stale(Path(tempfile.gettempdir()))
            self._dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        path = self._dir / f"{len(self._files):06d}.arrow"
        self._sink = pa.OSFile(str(path), "wb")
        self._writer, self._schema = pa.ipc.new_stream(self._sink, schema, options=_OPTIONS), schema
        self._files.append(path)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def __del__(self):
        self.close()


def remove_stale(tmp: Path) -> None:
    """Remove the spools in `tmp` of drivers that no longer run (killed, so never closed): at
    10^9 rows each held gigabytes. A spool without a pid in its name, or whose pid runs (maybe
    another driver's), or that this user may not remove, is left alone."""
    for path in tmp.glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's running process
            continue
        shutil.rmtree(path, ignore_errors=True)
