"""Narrowing a shard that keeps failing down to the rows that fail (issue 24).

A row that kills its worker (a text whose tokenization or forward pass exhausts the node's
memory, a crash in a native library) used to fail its whole shard `max_retries + 1` times and
the run with it, and every rerun the same way. Now, once a shard has used its retries (none
when max_retries=0: the user asked to fail at once, and the run does) on an
error that may be a row's (an actor that died, an exception in the task; not a read or write
error, which name their file), the pool narrows it down: the shard's rows are cut into up to
FANOUT pieces, each run as a *probe* (the task runs, nothing is written or returned; alone on
its worker, as is every retry after a worker died, since a worker holds two shards and a crash
cannot tell which of them caused it); a piece
that fails is cut again, and a single row that fails alone is a bad row, with the error as its
reason. When every piece is settled, the shard runs once more with those rows left out (recorded
in its errors table, so in `_errors.parquet` and the in-memory `errors`) and is committed as
usual: a rerun finds it done.

Each failing piece costs one crash of a worker, about log_FANOUT(shard rows) per bad row (3
for 256 rows); the pool replaces a worker that runs out of Ray restarts meanwhile. A shard
with more than MAX_BAD_ROWS rows failing alone is not a row's fault (say, every forward pass
fails): the run stops naming the shard, as before. A probe is not retried: an actor lost to
something else during narrowing (its node left) makes its rows look bad.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from ..errors import InputError, ShardFailedError
from ..inputs.shards import Shard, sub_shard
from .memory_kill import describe

log = logging.getLogger("pipeline")
FANOUT = 8
MAX_BAD_ROWS = 8


@dataclass(frozen=True)
class Job:
    """One call of an actor: a whole shard, or a piece of one being narrowed down (`probe`:
    run the task, write and return nothing); `bad` holds (global row, reason) pairs to record
    as bad rows instead of running them (the last run of a narrowed shard)."""

    shard: Shard
    probe: bool = False
    bad: tuple = ()
    alone: bool = False  # run with nothing else on its worker: a crash is then its own

    @property
    def runs_alone(self) -> bool:
        return self.alone or self.probe


class JobQueue:
    """The jobs to dispatch: requeued ones first (retries, narrowing pieces), then the plan's
    shards, each made into a Job only when it is next (a plan of 10**6 shards is not copied)."""

    def __init__(self, shards):
        self.front, self.rest, self.left = deque(), iter(shards), len(shards)

    def _fill(self) -> None:
        if not self.front and self.left:
            self.front.append(Job(next(self.rest)))
            self.left -= 1

    def __len__(self) -> int:
        return len(self.front) + self.left

    def __bool__(self) -> bool:
        return bool(self.front) or self.left > 0

    def __getitem__(self, k: int) -> Job:
        if k != 0:
            raise IndexError("only the next job can be looked at")
        self._fill()
        return self.front[0]

    def popleft(self) -> Job:
        self._fill()
        return self.front.popleft()

    def appendleft(self, job: Job) -> None:
        self.front.appendleft(job)

    def extendleft(self, jobs) -> None:
        self.front.extendleft(jobs)


def narrowable(error: BaseException) -> bool:
    """Whether a shard failing with `error` may owe it to one of its rows: not a read or write
    error (those name their file, and retrying the whole shard is right for them)."""
    return not isinstance(error, (InputError, OSError))


class Narrowing:
    """The shards being narrowed down: their pieces still out, and the bad rows found."""

    def __init__(self):
        self.open: dict[int, dict] = {}  # shard index -> {"shard", "pending", "bad", "error"}
        self.isolated: list[tuple[int, str]] = []  # (global row, reason) of every shard settled

    @property
    def active(self) -> bool:
        return bool(self.open)

    def start(self, shard: Shard, error: BaseException) -> list[Job]:
        """Probes over the pieces of `shard`, which failed `error` too often."""
        log.warning("%s keeps failing (%s): narrowing it down to the rows that fail",
                    shard.describe(), describe(error))
        self.open[shard.index] = {"shard": shard, "pending": 0, "bad": {}, "error": error}
        return self._split(shard.index, shard)

    def passed(self, job: Job) -> list[Job]:
        """A probe ran through: its rows are fine."""
        return self._settled(job.shard.index)

    def failed(self, job: Job, error: BaseException) -> list[Job]:
        """A probe failed: cut it again, or, one row, record that row as bad."""
        state = self.open[job.shard.index]
        state["pending"] -= 1
        if job.shard.num_rows > 1:
            return self._split(job.shard.index, job.shard)
        state["bad"][job.shard.row_offset] = f"the row fails alone ({describe(error)}); not processed"
        if len(state["bad"]) > MAX_BAD_ROWS:
            parent = state["shard"]
            raise ShardFailedError(
                f"{parent.describe()} failed; more than {MAX_BAD_ROWS} of its rows fail alone, so "
                f"the cause is not one row: {describe(state['error'])}") from None
        return self._settled(job.shard.index, counted=True)

    def _split(self, index: int, shard: Shard) -> list[Job]:
        n = min(FANOUT, shard.num_rows)
        bounds = [shard.num_rows * k // n for k in range(n + 1)]
        pieces = [Job(sub_shard(shard, a, b), probe=True) for a, b in zip(bounds, bounds[1:])]
        self.open[index]["pending"] += len(pieces)
        return pieces

    def _settled(self, index: int, counted: bool = False) -> list[Job]:
        state = self.open[index]
        if not counted:
            state["pending"] -= 1
        if state["pending"]:
            return []
        del self.open[index]
        bad = tuple(sorted(state["bad"].items()))
        self.isolated.extend(bad)
        if bad:
            log.warning("%s: row(s) %s fail alone; the shard runs again without them (reported "
                        "as bad rows)", state["shard"].describe(), ", ".join(str(r) for r, _ in bad))
        return [Job(state["shard"], bad=bad)]
