"""The committed shards of a manifest (version 2): columnar segments plus an append-only log.

Files, under `_commits/` in the output folder (`manifest.py` names the live ones in `_manifest.json`):
- `segment-<g>.parquet`: committed shard records as columns, one row per shard (`_shard`: its
  index), written whole once and never changed;
- the log of generation g: on a local filesystem one file `log-<g>.jsonl`, one JSON line per
  commit, appended and fsynced before the commit returns; on an object store, which has no
  appends, one object per batch of commits, `log-<g>/<seq>.jsonl`, written whole before the
  batch's shards count as committed.

In memory the segments are Arrow tables (about 250 bytes per shard, no Python object per
shard) and the log's records since the last fold are dicts (at most `fold_every()` of them). A
position array maps shard index -> row (-1: not committed). Records are flattened one level
(`stages.forward`) into columns; anything else that is not a scalar is kept as JSON text.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from ..errors import OutputWriteError

DIR = "_commits"
SHARD = "_shard"
FOLD_RECORDS = 4096  # log records folded into a segment at once
FOLD_ENV = "PIPELINE_FOLD_EVERY"  # TEST-ONLY: a smaller fold size, to reach folds in small runs


def fold_every() -> int:
    return int(os.environ.get(FOLD_ENV) or FOLD_RECORDS)


def segment_name(generation: int) -> str:
    return f"{DIR}/segment-{generation:06d}.parquet"


def log_name(generation: int, appendable: bool) -> str:
    """The log of a generation: a file (appendable filesystems) or a folder of batch objects."""
    return f"{DIR}/log-{generation:06d}" + (".jsonl" if appendable else "")


# -- records <-> columns ----------------------------------------------------------------------

def to_table(shards: list[int], records: list[dict]) -> pa.Table:
    flat = [_flatten(r) for r in records]
    keys = sorted({k for f in flat for k in f})
    columns = {SHARD: pa.array(shards, pa.int64())}
    for key in keys:
        columns[key] = pa.array([f.get(key) for f in flat])
    return pa.table(columns)


def _flatten(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict) and all(_scalar(v) for v in value.values()):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif _scalar(value):
            out[key] = value
        else:
            out[f"{key}:json"] = json.dumps(value)
    return out


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _unflatten(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if value is None or key == SHARD:
            continue
        if key.endswith(":json"):
            out[key[:-5]] = json.loads(value)
        elif "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = value
        else:
            out[key] = value
    return out


def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows] or tables[:1]
    if not tables:
        return pa.table({SHARD: pa.array([], pa.int64())})
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


# -- the store ---------------------------------------------------------------------------------

class Commits:
    """Committed records: segments (path or None when not yet written, table) + a tail of dicts."""

    def __init__(self):
        self.segments: list[tuple[str | None, pa.Table]] = []
        self.table = concat([])  # the segments' rows, concatenated (chunked, zero-copy)
        self.tail_ids: list[int] = []
        self.tail: list[dict] = []
        self.pos = np.full(0, -1, np.int64)
        self.count = self.dead = 0

    def add(self, shard: int, record: dict) -> None:
        self._place(shard, self.table.num_rows + len(self.tail))
        self.tail_ids.append(shard)
        self.tail.append(record)

    def add_segment(self, path: str | None, table: pa.Table) -> None:
        """A segment read back (in order), or a version-1 manifest's records (path None)."""
        start, shards = self.table.num_rows, table.column(SHARD).to_numpy()
        if len(shards):
            self._grow(int(shards.max()))
            self.pos[shards] = start + np.arange(len(shards))
        self.segments.append((path, table))
        self.table = concat([t for _, t in self.segments])
        self.count = int((self.pos >= 0).sum())
        self.dead = self.table.num_rows + len(self.tail) - self.count

    def remove(self, shard: int) -> None:
        if 0 <= shard < len(self.pos) and self.pos[shard] >= 0:
            self.pos[shard] = -1
            self.count, self.dead = self.count - 1, self.dead + 1

    def _grow(self, shard: int) -> None:
        if shard >= len(self.pos):
            grown = np.full(max(2 * len(self.pos), shard + 1, 1024), -1, np.int64)
            grown[:len(self.pos)] = self.pos
            self.pos = grown

    def _place(self, shard: int, position: int) -> None:
        self._grow(shard)
        if self.pos[shard] >= 0:
            self.dead += 1  # committed again: the later record wins
        else:
            self.count += 1
        self.pos[shard] = position

    def has(self, shard: int) -> bool:
        return 0 <= shard < len(self.pos) and self.pos[shard] >= 0

    def committed(self) -> np.ndarray:
        """Indices of the committed shards, ascending."""
        return np.flatnonzero(self.pos >= 0)

    def get(self, shard: int) -> dict | None:
        if not 0 <= shard < len(self.pos) or self.pos[shard] < 0:
            return None
        p = int(self.pos[shard])
        if p >= self.table.num_rows:
            return self.tail[p - self.table.num_rows]
        return _unflatten(self.table.slice(p, 1).to_pylist()[0])

    def records(self, shards: np.ndarray, chunk: int = 65536):
        """Yield (shard, record) for `shards` (committed indices) in the order given."""
        rows = self.table.num_rows
        for start in range(0, len(shards), chunk):
            ids = shards[start:start + chunk]
            where = self.pos[ids]
            in_table = where < rows
            table_rows = iter(self.table.take(pa.array(where[in_table])).to_pylist()) if in_table.any() else None
            for shard, p, stored in zip(ids.tolist(), where.tolist(), in_table.tolist()):
                yield shard, (_unflatten(next(table_rows)) if stored else self.tail[p - rows])

    def column(self, name: str) -> np.ndarray:
        """A numeric top-level field of every committed record (0 where absent), as float64."""
        shards = self.committed()
        where = self.pos[shards]
        rows = self.table.num_rows
        out = np.zeros(len(shards))
        stored = where < rows
        if stored.any() and name in self.table.column_names:
            values = self.table.column(name).take(pa.array(where[stored]))
            out[stored] = values.fill_null(0).to_numpy(zero_copy_only=False)
        out[~stored] = [self.tail[p - rows].get(name, 0) for p in where[~stored]]
        return out

    def fold(self, full: bool = False) -> list[str]:
        """Move the tail into a new segment (path None) and merge segments like a binary counter
        (all of them when `full` or when some rows are dead); returns the paths of segment
        files no longer used. Positions are recomputed from the segments."""
        if not self.tail and not self.dead and not (full and len(self.segments) > 1):
            return []
        segments = list(self.segments)
        if self.tail:
            segments.append((None, to_table(self.tail_ids, self.tail)))
        if full or self.dead:
            merged = [(None, self._alive(concat([t for _, t in segments])))]
            replaced = [p for p, _ in segments if p]
        else:
            replaced = []
            while len(segments) >= 2 and segments[-2][1].num_rows <= segments[-1][1].num_rows:
                (p1, t1), (p2, t2) = segments.pop(-2), segments.pop()
                replaced += [p for p in (p1, p2) if p]
                segments.append((None, concat([t1, t2])))
            merged = segments
        self.segments, self.tail_ids, self.tail = merged, [], []
        self.table = concat([t for _, t in merged])
        self.pos[:] = -1
        shard_col = self.table.column(SHARD).to_numpy()
        self.pos[shard_col] = np.arange(len(shard_col))
        self.count, self.dead = len(shard_col), 0
        return replaced

    def _alive(self, table: pa.Table) -> pa.Table:
        """Rows of `table` (segments then tail, in position order) still committed."""
        shard_col = table.column(SHARD).to_numpy()
        alive = self.pos[shard_col] == np.arange(len(shard_col))
        return table if alive.all() else table.filter(pa.array(alive))


class ShardRecords(Mapping):
    """Committed shards as a read-only mapping shard id ("000042") -> record dict, built on
    access from the columns. Iteration is in shard order; `values()`/`items()` convert in bulk."""

    def __init__(self, commits: Commits):
        self._c = commits

    def __len__(self) -> int:
        return self._c.count

    def __iter__(self):
        return (f"{k:06d}" for k in self._c.committed().tolist())

    def __contains__(self, key) -> bool:
        index = self._index(key)
        return index is not None and self._c.has(index)

    def __getitem__(self, key) -> dict:
        index = self._index(key)
        record = None if index is None else self._c.get(index)
        if record is None:
            raise KeyError(key)
        return record

    def values(self):
        return _Sized(self, lambda: (r for _, r in self._c.records(self._c.committed())))

    def items(self):
        return _Sized(self, lambda: ((f"{k:06d}", r) for k, r in self._c.records(self._c.committed())))

    def total(self, name: str) -> float:
        """Sum of a numeric field over every committed shard (e.g. "rows")."""
        return float(self._c.column(name).sum())

    @staticmethod
    def _index(key) -> int | None:
        try:
            return int(key)
        except (TypeError, ValueError):
            return None


class _Sized:
    def __init__(self, owner, make):
        self._owner, self._make = owner, make

    def __len__(self) -> int:
        return len(self._owner)

    def __iter__(self):
        return self._make()


# -- the log's files ---------------------------------------------------------------------------

def encode_lines(entries: list[tuple[str, dict]]) -> bytes:
    return b"".join(json.dumps({"shard": s, **r}, separators=(",", ":")).encode() + b"\n"
                    for s, r in entries)


def parse_lines(body: bytes, where: str, torn_ok: bool) -> list[tuple[int, dict]]:
    """(shard index, record) per line. A last line without its newline is a write the driver
    never saw finish (killed mid-append): it was never committed and is skipped when `torn_ok`."""
    lines = body.split(b"\n")
    if lines[-1] and not torn_ok:
        raise OutputWriteError(f"{where}: its last line is incomplete; the file is damaged")
    out = []
    for n, line in enumerate(lines[:-1], 1):
        try:
            entry = json.loads(line)
            out.append((int(entry.pop("shard")), entry))
        except (ValueError, KeyError, TypeError) as e:
            raise OutputWriteError(f"{where} line {n} is not a commit record ({e}); the output's "
                                   "commit log is damaged: rerun with overwrite=True (--overwrite) "
                                   "to start over") from None
    return out
