"""The shard plan: the corpus cut into fixed row ranges, the unit of dispatch, retry and resume.

Shard k covers global rows [k*S, min((k+1)*S, N)); it may span fragment (file) boundaries, so
thousands of small files do not become thousands of tiny tasks. The plan depends only on the
fragments' row counts and S, so it is the same in every run over the same input; its digest is
kept in the manifest and compared on resume.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .sources import Fragment, Source

MIN_SHARD_ROWS = 256
MAX_SHARD_ROWS = 20_000
SHARDS_PER_WORKER = 8


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of fragment `fragment`."""

    fragment: int
    start: int
    stop: int


@dataclass(frozen=True)
class Shard:
    """One unit of work: `num_rows` rows starting at global row `row_offset`, read as `pieces`."""

    index: int
    row_offset: int
    num_rows: int
    pieces: tuple[Piece, ...]

    @property
    def id(self) -> str:
        return f"{self.index:06d}"

    def describe(self) -> str:
        return f"shard {self.id} (rows {self.row_offset}..{self.row_offset + self.num_rows - 1})"


def default_shard_rows(total_rows: int, num_workers: int) -> int:
    """About SHARDS_PER_WORKER shards per worker, clamped so a shard takes seconds to minutes."""
    rows = -(-total_rows // max(1, num_workers * SHARDS_PER_WORKER))
    return max(MIN_SHARD_ROWS, min(MAX_SHARD_ROWS, rows))


def plan_shards(fragments: tuple[Fragment, ...] | list[Fragment], shard_rows: int) -> list[Shard]:
    """Cut the fragments, in order, into shards of `shard_rows` rows (the last may be shorter)."""
    assert shard_rows > 0
    shards, pieces, offset, filled = [], [], 0, 0
    for f_index, fragment in enumerate(fragments):
        start = 0
        while start < fragment.num_rows:
            take = min(fragment.num_rows - start, shard_rows - filled)
            pieces.append(Piece(f_index, start, start + take))
            start, filled = start + take, filled + take
            if filled == shard_rows:
                shards.append(Shard(len(shards), offset, filled, tuple(pieces)))
                pieces, offset, filled = [], offset + filled, 0
    if filled:
        shards.append(Shard(len(shards), offset, filled, tuple(pieces)))
    return shards


class ShardPlan:
    """The same shards as `plan_shards`, held as numbers (the fragments' row bounds and the shard
    size): a `Shard` is made when asked for, so 10**6 shards cost no Python object each.
    `subset(indices)` is the plan's shards at `indices` (e.g. the ones still to do), likewise."""

    def __init__(self, fragments, shard_rows: int, indices: np.ndarray | None = None):
        assert shard_rows > 0
        self.bounds = fragments if isinstance(fragments, np.ndarray) else \
            np.cumsum([0, *(f.num_rows for f in fragments)], dtype=np.int64)
        self.shard_rows, self.num_rows = shard_rows, int(self.bounds[-1])
        self.num_shards = -(-self.num_rows // shard_rows)
        self.indices = indices  # None: every shard

    def __len__(self) -> int:
        return self.num_shards if self.indices is None else len(self.indices)

    def __getitem__(self, k: int) -> Shard:
        index = k if self.indices is None else int(self.indices[k])
        if not 0 <= index < self.num_shards:
            raise IndexError(k)
        start = index * self.shard_rows
        rows = min(self.shard_rows, self.num_rows - start)
        return Shard(index, start, rows, _pieces(self.bounds, start, rows))

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def subset(self, indices: np.ndarray) -> "ShardPlan":
        return ShardPlan(self.bounds, self.shard_rows, np.asarray(indices, dtype=np.int64))

    def rows(self) -> int:
        """Input rows of the shards in this plan (or subset)."""
        if self.indices is None:
            return self.num_rows
        starts = self.indices * self.shard_rows
        return int(np.minimum(self.shard_rows, self.num_rows - starts).sum())


def sub_shard(shard: Shard, start: int, stop: int) -> Shard:
    """Rows [start, stop) of `shard` (offsets within it) as a shard of the same index: a piece
    probed while narrowing a failing shard down (`narrow.py`); it is never committed."""
    pieces, offset = [], 0
    for p in shard.pieces:
        n = p.stop - p.start
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            pieces.append(Piece(p.fragment, p.start + lo - offset, p.start + hi - offset))
        offset += n
    return Shard(shard.index, shard.row_offset + start, stop - start, tuple(pieces))


def plan_record(source: Source, shard_rows: int, num_shards: int) -> dict:
    """What the manifest keeps about the plan, to recognise the same input on resume."""
    digest = hashlib.sha256(json.dumps([[f.key, f.num_rows] for f in source.fragments]).encode())
    return {
        "source": source.kind,
        "num_rows": source.num_rows,
        "num_fragments": len(source.fragments),
        "input_digest": digest.hexdigest()[:16],
        "shard_rows": shard_rows,
        "num_shards": num_shards,
    }


def read_shard(source: Source, shard: Shard, columns: list[str]) -> pa.Table:
    """The shard's rows (only `columns`), read by the actor straight from the source."""
    tables = [source.read(p.fragment, p.start, p.stop, columns) for p in shard.pieces]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    if table.num_rows != shard.num_rows:
        raise RuntimeError(f"{shard.describe()}: read {table.num_rows} rows, the plan says "
                           f"{shard.num_rows}; the input changed since it was planned")
    return table


# The int8 calibration sample (pipeline/output/quantize.py): rows read as runs spread over the input.
CALIBRATION_ROWS = 1000
CALIBRATION_WINDOWS = 20


def calibration_shards(fragments, sample_rows: int = CALIBRATION_ROWS,
                       windows: int = CALIBRATION_WINDOWS) -> list[Shard]:
    """Up to `sample_rows` rows as `windows` runs of consecutive rows spread evenly over the
    fragments, each run a `Shard` (index -1-k, so it can never be mistaken for a real shard)."""
    total = sum(f.num_rows for f in fragments)
    if total <= sample_rows:
        starts, width = [0], total
    else:
        width = max(1, sample_rows // windows)
        starts = [int(s) for s in np.linspace(0, total - width, windows).round()]
    bounds = np.cumsum([0] + [f.num_rows for f in fragments])
    return [Shard(-1 - k, g, min(width, total - g), _pieces(bounds, g, min(width, total - g)))
            for k, g in enumerate(starts) if width > 0]


def _pieces(bounds: np.ndarray, start: int, rows: int) -> tuple[Piece, ...]:
    """Rows [start, start + rows) of the concatenated fragments as per-fragment pieces
    (`bounds`: cumulative row counts, 0 first); fragments without rows give no piece."""
    pieces, stop = [], start + rows
    f = max(0, int(np.searchsorted(bounds, start, side="right")) - 1)
    while f < len(bounds) - 1 and bounds[f] < stop:
        lo, hi = max(start, bounds[f]), min(stop, bounds[f + 1])
        if lo < hi:
            pieces.append(Piece(f, int(lo - bounds[f]), int(hi - bounds[f])))
        f += 1
    return tuple(pieces)
