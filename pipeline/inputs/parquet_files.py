"""Parquet input files read with few object-store requests (docs/SCALE.md counts them).

The planner lists the input (a listing gives every file's size) and reads each footer once, its
size known: one GET per file, no HEAD. The sizes travel with the source to the actors (one
number per file; the footers do not: plans reach 10**6 shards over as many files). An actor
opens a file as a pyarrow dataset fragment of that size (no HEAD), reads its footer once and
keeps it (`Footers`: the files it read last), so a shard's rows cost the GET(s) of its row
groups' column chunks only (pre-buffered: pyarrow coalesces adjacent chunks into one ranged
GET), plus a footer the first time the actor reads a file.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..fs import parquet_fragment

FOOTERS_KEPT = 16  # files whose footer an actor keeps (a shard's reads move forward through the files)


class OpenedFile:
    """One input file opened with its size known and its footer read (parsed once)."""

    def __init__(self, fs: pafs.FileSystem, path: str, size: int | None):
        self.fragment = parquet_fragment(fs, path, size)
        self.fragment.ensure_complete_metadata()  # the footer: one GET of the object's end
        meta = self.fragment.metadata
        self.metadata = meta
        self.bounds = np.cumsum([0, *(meta.row_group(g).num_rows for g in range(meta.num_row_groups))],
                                dtype=np.int64)

    def read(self, start: int, stop: int, columns: list[str]) -> pa.Table:
        """Rows [start, stop) (only `columns`), reading only the row groups that overlap them."""
        first = max(0, int(np.searchsorted(self.bounds, start, side="right")) - 1)
        last = int(np.searchsorted(self.bounds, stop, side="left"))  # row groups first..last-1
        groups = [g for g in range(first, last) if self.bounds[g + 1] > self.bounds[g]]
        if start >= stop or not groups:
            return self.fragment.physical_schema.empty_table().select(columns)
        table = self.fragment.subset(row_group_ids=groups).to_table(columns=columns)
        return table.slice(start - int(self.bounds[groups[0]]), stop - start)


class Footers:
    """The files an actor opened last (their parsed footers), by file index: at most `kept`,
    the least recently used dropped first. Shared by an actor's two calls: a file both start
    on at once is opened by one of them (its footer read once), the other waits for it."""

    def __init__(self, kept: int = FOOTERS_KEPT):
        self.kept, self._files = kept, OrderedDict()
        self._lock, self._opening = threading.Lock(), threading.Lock()

    def get(self, index: int, open_file: Callable[[], OpenedFile]) -> OpenedFile:
        opened = self._cached(index)
        if opened is None:
            with self._opening:  # one footer read at a time; another file's rows read on meanwhile
                opened = self._cached(index)
                if opened is None:
                    opened = open_file()
                    with self._lock:
                        self._files[index] = opened
                        while len(self._files) > self.kept:
                            self._files.popitem(last=False)
        return opened

    def _cached(self, index: int) -> OpenedFile | None:
        with self._lock:
            if index in self._files:
                self._files.move_to_end(index)
            return self._files.get(index)

    def __len__(self) -> int:
        return len(self._files)
