"""Run statistics, the driver's live progress bar (rows, tokens/s, ETA) and the final summary table.

On a terminal the bar redraws in place; without one (logs, `ray job submit`) it prints one line
every 10 seconds so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class WorkerStats:
    """What one actor did in this run; tokens/s is over its engine time."""

    worker: int
    shards: int
    rows: int
    tokens: int
    busy_seconds: float
    restarts: int = 0
    lost: str = ""  # why the worker was given up (its node left the cluster); "" when it was not

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.busy_seconds if self.busy_seconds > 0 else 0.0


@dataclass(frozen=True)
class RunStats:
    """Totals of one `pipeline.run` call.

    `rows`/`tokens`/`seconds` count this call's work; `rows_total` is every row now in the
    output (including shards committed by an earlier, resumed run). `seconds` is the whole call
    (Ray start, actor and model start, embedding, writing); `startup_seconds` is the part before
    the first shard was dispatched. `bad_rows` counts this call's rows not embedded (null,
    empty or whitespace-only text); `bad_rows_total` those of the whole output, and
    `duplicate_ids` the output's rows whose id is not unique (embedded, and listed in
    `_errors.parquet` next to the bad rows). `chunked` counts texts embedded as several windows
    (truncation="chunk"). `stages` sums the engines' per-stage seconds over this call's shards
    (tokenize, build, copy_in, forward, copy_out, idle; see `workers.EngineStats`) and
    `read_seconds`/`write_seconds` the actors' input reads and part writes.
    """

    rows: int
    rows_total: int
    tokens: int
    seconds: float
    startup_seconds: float
    truncated: int
    bad_rows: int
    shards: int
    resumed_shards: int
    retries: int
    workers: tuple[WorkerStats, ...]
    bad_rows_total: int = 0
    duplicate_ids: int = 0
    chunked: int = 0
    stages: dict = field(default_factory=dict)
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    isolated_rows: tuple[int, ...] = ()  # rows that failed alone (killed their worker): bad rows

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost_workers(self) -> tuple[int, ...]:
        """Workers given up during the run (Ray could not restart them: a node left)."""
        return tuple(w.worker for w in self.workers if w.lost)

    @property
    def reported_rows(self) -> int:
        """Rows listed in the errors file: bad texts of the whole output plus repeated ids."""
        return self.bad_rows_total + self.duplicate_ids

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tokens_per_s"] = self.tokens_per_s
        out["lost_workers"] = list(self.lost_workers)
        for w, d in zip(self.workers, out["workers"]):
            d["tokens_per_s"] = w.tokens_per_s
        return out


class Progress:
    """A progress bar over rows; call `update` on every committed shard and `tick` while waiting."""

    def __init__(self, total_rows: int, done_rows: int = 0, enabled: bool = True, stream=None,
                 task: str = "embed"):
        self.total, self.rows, self.tokens = total_rows, done_rows, 0
        self.task = task
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else 10.0
        self.start = self._last = time.monotonic()
        self._start_rows = done_rows

    def update(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens
        self.tick()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        end = "\r" if self.tty else "\n"
        self.stream.write(self.line(now) + end)
        self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.monotonic()) - self.start)
        frac = self.rows / self.total if self.total else 1.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        rate = (self.rows - self._start_rows) / elapsed
        eta = (self.total - self.rows) / rate if rate > 0 else float("nan")
        return (f"{self.task} [{bar}] {100 * frac:5.1f}% {self.rows:,}/{self.total:,} rows  "
                f"{self.tokens / elapsed:,.0f} tok/s  ETA {_clock(eta)}")

    def close(self) -> None:
        self.tick(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def done_verb(task: str) -> str:
    """What the summary says was done to a row of `task` ("embedded" for the vector tasks)."""
    return {"score": "scored", "classify": "classified"}.get(task, "embedded")


def summary_line(stats: RunStats, task: str = "embed") -> str:
    """The one line an in-memory run prints by default (`progress=None`)."""
    bad = (f"; {stats.bad_rows:,} bad row(s) not {done_verb(task)} (NaN / None rows in the result, "
           "listed in result.errors)") if stats.bad_rows else ""
    return (f"{done_verb(task)} {stats.rows:,} rows in {stats.seconds:.1f} s "
            f"({stats.tokens_per_s:,.0f} tokens/s){bad}; progress=True shows the full summary")


def summary_table(stats: RunStats, output: str | None, fmt: str, task: str = "embed") -> str:
    """The final summary printed by the driver (and `jobs/embed_corpus.py`)."""
    verb = done_verb(task)
    lines = [
        f"{'rows ' + verb:<15} {stats.rows:,} in {stats.shards} shard(s); {stats.resumed_shards} shard(s) "
        f"already done, {stats.rows_total:,} rows in the output",
        f"tokens          {stats.tokens:,} ({stats.truncated:,} text(s) truncated"
        + (f", {stats.chunked:,} embedded in windows)" if stats.chunked else ")"),
        f"wall time       {stats.seconds:.1f} s (start-up {stats.startup_seconds:.1f} s)",
        f"throughput      {stats.tokens_per_s:,.0f} tokens/s overall",
        f"bad rows        {stats.bad_rows:,} not {verb} ({stats.bad_rows_total:,} in the whole output); "
        f"{stats.duplicate_ids:,} row(s) with a repeated id"
        + (" (listed in _errors.parquet)" if stats.reported_rows and output else ""),
        f"shard retries   {stats.retries}",
        *([f"isolated rows   {_rows(stats.isolated_rows)}: each failed alone (see _errors.parquet), "
           "the rest of their shards was embedded"] if stats.isolated_rows else []),
        *[f"lost worker     {w.lost}" for w in stats.workers if w.lost],
        *_stage_lines(stats),
        "",
        f"{'worker':>6} {'shards':>7} {'rows':>10} {'tokens':>12} {'busy s':>8} {'tokens/s':>10} {'restarts':>8}",
    ]
    for w in stats.workers:
        lines.append(f"{w.worker:>6} {w.shards:>7} {w.rows:>10,} {w.tokens:>12,} "
                     f"{w.busy_seconds:>8.1f} {w.tokens_per_s:>10,.0f} {w.restarts:>8}")
    if output:
        lines += ["", f"output          {output} ({fmt} parts; manifest {output.rstrip('/')}/_manifest.json)"]
    return "\n".join(lines)


def _rows(rows: tuple[int, ...], most: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:most])
    return shown + (f" and {len(rows) - most} more" if len(rows) > most else "")


def _stage_lines(stats: RunStats) -> list[str]:
    """Where the workers' time went: actor I/O, then the engine's stages, in seconds and shares."""
    if not stats.stages:
        return []
    parts = {"read": stats.read_seconds, **stats.stages, "write": stats.write_seconds}
    total = sum(parts.values()) or 1.0
    shown = " · ".join(f"{name} {sec:.1f} s ({sec / total:.0%})" for name, sec in parts.items())
    return [f"worker time     {shown}",
            "                (summed over workers; idle: the model waiting for its next batch)"]


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
