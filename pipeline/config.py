"""User configuration of one pipeline run: a frozen dataclass, validated on construction.

The engine has its own `workers.EngineConfig`; this one says how the corpus is read, sharded,
dispatched and written. Values derived at run time (shard size, thread split) live in the driver.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from .errors import InputError
from .output.content_hash import HASH_COLUMN
from .tasks import TASKS, check_task

OUTPUT_FORMATS = ("parquet", "arrow")
BAD_ROW_POLICIES = ("record", "error")
OUTPUT_DTYPES = ("float32", "float16", "int8", "ubinary")
REUSE_MISMATCH = ("refuse", "ignore")


@dataclass(frozen=True)
class PipelineConfig:
    """How a corpus is sharded, embedded by a pool of Ray actors, and written.

    Args:
        task: "embed" (vectors), "score" (a cross-encoder's or LLM reranker's relevance of the
            pair (text_column, pair_column)), "classify" (logits and the argmax's label),
            "tokens" (one vector per token, document side), "sparse" (SPLADE vocabulary weights)
            "bge-m3" (dense + sparse + multi-vector) or "chunks" (one row per chunk of each
            text: late or split chunking, set by the engine options `chunking=`,
            `chunk_tokens=`, `chunk_overlap=`); the part schema of each is in
            `pipeline/tasks.py`. Passed on to the engine.
        text_column: column holding the texts (a list of strings is read as this column); the
            query with task="score".
        pair_column: task="score" only (and required there): the column holding the passage
            paired with each row's query.
        id_column: column copied to the output `id`; None: the global row index (int64).
        spans_column: task="chunks" only: a column holding each text's chunks as a list of
            [char_start, char_end] integer pairs (list<list<int>> or
            list<fixed_size_list<int>[2]>), instead of chunks cut by token counts. A null or
            empty list, or a span outside its text, makes the row a bad row.
        passthrough_columns: extra input columns copied unchanged into every output part.
        num_workers: engine actors; None or "auto": one per GPU, or on CPU-only clusters one
            per `threads_per_worker` cores, and nodes that join the cluster during the run get
            workers too (elastic; see `pipeline/execution/pool.py`). A number fixes the pool.
        threads_per_worker: torch threads (and reserved CPUs) of each CPU actor; None: the
            cluster's CPUs split evenly across the workers (at most 8 each).
        shard_rows: rows per shard, the unit of dispatch, retry and resume; None: sized from the
            corpus (about 8 shards per worker, 256..20,000 rows). A resumed run keeps the size
            recorded in the output's manifest. Token tasks cap it by `max_part_bytes`.
        max_part_bytes: task="tokens" / "bge-m3": shards are planned with at most this many
            bytes of output (estimated per row as max_length x width x bytes per value, the
            worst case; see `pipeline/output/part_size.py`), so a part stays bounded. Default 256 MiB;
            None: no bound.
        output_format: "parquet" (default) or "arrow" (Arrow IPC file) parts.
        output_dtype: stored embedding values: "float32", "float16", "int8" (per-dimension
            ranges calibrated on a sample of the corpus, kept in the manifest) or "ubinary"
            (sign bits packed 8 per byte); see `pipeline/output/quantize.py`. Files only: an
            in-memory run returns float32. None: the task's default (float32; float16 for the
            token vectors of task="tokens" / "bge-m3", which take float16 or float32); scores,
            logits and sparse values are float32 only.
        max_retries: times one shard is redone after its actor died or it raised; then (when
            > 0) it is narrowed down to the rows that fail alone, reported as bad rows, and the
            rest is embedded (`pipeline/execution/narrow.py`); with 0 the run fails at once naming the shard.
        max_restarts: times Ray restarts one dead actor.
        restart_timeout_s: seconds a dead worker's restart may take before the worker is given
            up (e.g. its node left the cluster and no other node has room for it): its shards go
            to the surviving workers and the summary names it. The wait never holds a run whose
            every shard is done, and only when no worker is left does the run fail
            (`WorkersLostError`). Default 180.
        address: the Ray cluster: "host:port" (or "ray://host:port"), "local" (start a new local
            Ray), or None: RAY_ADDRESS, else the cluster `ray start` recorded on this machine,
            else a new local Ray. An address that answers nothing fails within seconds
            (`ClusterUnreachableError`) naming it and the fix.
        on_bad_row: what a row whose text (in either column of a pair) is null, empty or
            whitespace-only does. "record"
            (default): it is not embedded, it is listed (id, shard, row, reason) in the output's
            `_errors.parquet` (in memory: `result.errors`) and counted in `stats.bad_rows`;
            "error": the run stops naming its shard, row and id.
        skip_bad_rows: deprecated alias: True means on_bad_row="record", False "error".
        cast_text: cast a non-string text column (integers, floats, booleans, binary UTF-8)
            to string with pyarrow instead of refusing it.
        overwrite: delete a previous run's parts and manifest in `output` and start over.
        progress: True: a live progress bar (stderr) and the final summary table (stdout);
            False: nothing; None (default): both for a run with an `output` folder, and one
            summary line for an in-memory run (a notebook call stays quiet).
        in_process_rows: an in-memory input (list, table, DataFrame, in-memory HF dataset) of
            at most this many rows, when no Ray is running here and none is configured
            (`address`, RAY_ADDRESS, `ray start`), runs on one engine in this process instead
            of starting a local Ray and an actor (`pipeline/execution/local.py`: same shards, outputs,
            bad-row reports and summary; the engine is kept for the next call like warm
            actors; `threads_per_worker` then sets this process's torch threads). Default
            10,000; 0: always Ray. num_workers > 1 and a model URI always use Ray.
        reuse: the output folder (local or URI) of an earlier run: rows whose content hash
            (`pipeline/output/content_hash.py`) is in it are copied from it instead of embedded,
            when its fingerprint's values part equals this run's (`pipeline/execution/reuse.py`).
            Needs `output`; not task="chunks". Not part of the fingerprint.
        reuse_mismatch: "refuse" (default: a previous output made with other settings raises
            FingerprintMismatch naming the difference) or "ignore" (it is ignored: every row is
            embedded).
    """

    text_column: str = "text"
    id_column: str | None = None
    passthrough_columns: tuple[str, ...] = ()
    num_workers: int | str | None = None
    threads_per_worker: int | None = None
    shard_rows: int | None = None
    output_format: str = "parquet"
    output_dtype: str | None = None
    max_retries: int = 2
    max_restarts: int = 3
    restart_timeout_s: float = 180.0
    address: str | None = None
    on_bad_row: str = "record"
    skip_bad_rows: bool | None = None
    cast_text: bool = False
    overwrite: bool = False
    progress: bool | None = None
    task: str = "embed"
    pair_column: str | None = None
    max_part_bytes: int = 256 * 2**20
    in_process_rows: int = 10_000
    spans_column: str | None = None
    reuse: str | None = None
    reuse_mismatch: str = "refuse"

    def __post_init__(self):
        if not isinstance(self.text_column, str) or not self.text_column:
            raise InputError(f"text_column={self.text_column!r} must be a non-empty column name")
        if self.id_column is not None and (not isinstance(self.id_column, str) or not self.id_column):
            raise InputError(f"id_column={self.id_column!r} must be a column name or None")
        if isinstance(self.passthrough_columns, str):
            raise InputError(f"passthrough_columns={self.passthrough_columns!r} must be a tuple of "
                             f"column names, e.g. ({self.passthrough_columns!r},)")
        object.__setattr__(self, "passthrough_columns", tuple(self.passthrough_columns))
        spec = check_task(self.task, self.pair_column, self.output_dtype)
        if self.output_dtype is None:
            object.__setattr__(self, "output_dtype", spec.output_dtypes[0])
        reserved = {"id", *spec.output_names, HASH_COLUMN}
        clash = reserved.intersection(self.passthrough_columns)
        if clash:
            raise InputError(f"passthrough_columns {sorted(clash)} clash with the output columns "
                             f"{sorted(reserved)}; rename them in the input first")
        if self.spans_column is not None and (self.task != "chunks" or not isinstance(self.spans_column, str)
                                              or not self.spans_column):
            raise InputError(f"spans_column={self.spans_column!r} names the chunk spans of task='chunks' "
                             f"(chunking='late' or 'split'), but task={self.task!r}: pass chunking= "
                             "(--chunking) too, or drop spans_column")
        if self.num_workers == "auto":
            object.__setattr__(self, "num_workers", None)
        for name in ("num_workers", "threads_per_worker", "shard_rows", "max_part_bytes"):
            _positive_or_none(name, getattr(self, name))
        for name in ("max_retries", "max_restarts", "in_process_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{name}={value!r} must be an integer >= 0")
        if isinstance(self.restart_timeout_s, bool) or not isinstance(self.restart_timeout_s, (int, float)) \
                or not self.restart_timeout_s > 0:
            raise InputError(f"restart_timeout_s={self.restart_timeout_s!r} must be a number of seconds > 0")
        if self.progress not in (None, True, False):
            raise InputError(f"progress={self.progress!r} must be True, False or None (automatic)")
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise InputError(f"address={self.address!r} must be 'host:port', 'local' or None (automatic)")
        if self.skip_bad_rows is not None:
            warnings.warn("skip_bad_rows is deprecated; use on_bad_row='record' or 'error'",
                          DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "on_bad_row", "record" if self.skip_bad_rows else "error")
        _choice("on_bad_row", self.on_bad_row, BAD_ROW_POLICIES)
        _choice("output_format", self.output_format, OUTPUT_FORMATS)
        _choice("output_dtype", self.output_dtype, OUTPUT_DTYPES)
        _choice("reuse_mismatch", self.reuse_mismatch, REUSE_MISMATCH)
        if self.reuse is not None:
            if not isinstance(self.reuse, (str, os.PathLike)) or not os.fspath(self.reuse):
                raise InputError(f"reuse={self.reuse!r} must be the path or URI of an earlier run's output")
            object.__setattr__(self, "reuse", os.fspath(self.reuse))

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The columns holding texts the engine reads: text_column, then pair_column if any."""
        return (self.text_column,) + ((self.pair_column,) if self.pair_column else ())

    @property
    def input_columns(self) -> list[str]:
        """The input columns an actor reads: text (and pair), then id, then pass-through (no repeats)."""
        cols = [*self.text_columns, self.spans_column, self.id_column, *self.passthrough_columns]
        return list(dict.fromkeys(c for c in cols if c is not None))

    def fingerprint(self) -> dict:
        """The part of the output fingerprint this config owns (columns and output form)."""
        return {
            "text_column": self.text_column,
            "id_column": self.id_column,
            "passthrough_columns": list(self.passthrough_columns),
            "output_format": self.output_format,
            "output_dtype": self.output_dtype,
            # Only when set, so embedding manifests written before pairs existed stay resumable.
            **({"pair_column": self.pair_column} if self.pair_column else {}),
            **({"spans_column": self.spans_column} if self.spans_column else {}),
            # The task's own entries (tokens: "side": "document", the passages' side), last.
            **dict(TASKS[self.task].fingerprint),
        }


def _positive_or_none(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InputError(f"{name}={value!r} must be a positive integer or None (automatic)")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")
