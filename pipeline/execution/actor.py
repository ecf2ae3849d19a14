"""The Ray actor that hosts one engine: reads its shard's rows, runs the task on them, writes the part.

The actor class lives here, not in `workers/`, because `workers/` is the
engine's package and this class is the pipeline's side of the contract (it only calls the
task's engine method, `Engine.embed` / `.score` / `.classify` as `pipeline/tasks.py` says, and
`.stats`, `.fingerprint()`, `.dim`, `.labels`).

The actor runs two calls at once (`max_concurrency=2`): while one call holds the engine, the
other reads its rows, so the engine never waits for I/O between shards (the "prefetched shard").
Writing a part also happens outside the engine lock, overlapping the next shard's compute.

An actor outlives one run (warm actors, `pipeline/execution/warm.py`), and its engine may be
rebuilt in place for a later run with other engine settings (`build`: the process, its imports
and its threads are kept; only the model is loaded again). Everything that belongs to a run (the
PipelineConfig, the output folder, the source, the engine settings) arrives with every call as
`run_box = [ObjectRef(RunContext)]`, fetched once per run. So a run never sees the previous
run's settings, and an actor that Ray restarts mid-run (its constructor replayed with the
settings it was first built from) rebuilds the run's engine before its next call.
"""
from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from workers import Engine, TextTooLongError

from ..config import PipelineConfig
from ..errors import BadRowsError
from ..inputs.shards import Shard, read_shard
from ..inputs.sources import text_as_string
from ..inputs.validate import embeddable_texts, errors_table, split_bad_rows
from ..output.content_hash import HASH_COLUMN, row_hashes
from ..output.id_spool import id_batch
from ..output.manifest import Manifest
from ..output.output_folder import OutputFolder
from ..output.writer import task_part
from ..tasks import TASKS
from .model_sync import ensure_local_model
from .reuse import PreviousParts, merge


@dataclass(frozen=True)
class RunContext:
    """What one run tells its actors: put in the object store once per run, passed boxed."""

    config: PipelineConfig
    folder: OutputFolder | None
    source: object  # a pipeline.inputs.sources.Source
    engine: tuple | None = None  # (EngineConfig, model spec or None) the run's engines are built from

CRASH_FILE_ENV = "PIPELINE_CRASH_FILE"


def _crash_point(shard: Shard, point: str) -> None:
    """TEST-ONLY fault injection (tests/pipeline/test_pipeline_crash.py): when the file named by
    $PIPELINE_CRASH_FILE (set in the Ray workers' environment) holds "<shard id> <point>", it is
    removed and this actor SIGKILLs itself there, once. Never set it outside tests."""
    path = os.environ.get(CRASH_FILE_ENV)
    if not path or not os.path.isfile(path):
        return
    with open(path) as f:
        armed = f.read().split()
    if armed == [shard.id, point]:
        os.remove(path)
        os.kill(os.getpid(), signal.SIGKILL)


class EngineThread:
    """Runs every call it is given on one thread of its own (`inline`: on the caller's).

    An engine must be built and called from one thread. Ray calls an actor's methods from
    several threads (DEPTH here; Ray Data's pools may too), and OpenMP keeps a team of threads
    per calling thread: with more OpenMP threads alive than cores, libgomp stops spinning at
    barriers and sleeps instead, and a forward runs 20-35% slower (measured on 2 cores: ~34,000
    instead of ~300 context switches per embed call; docs/BENCHMARKS.md)."""

    def __init__(self, inline: bool = False):
        self._pool = None if inline else ThreadPoolExecutor(1, thread_name_prefix="engine")

    def __call__(self, fn, *args):
        return fn(*args) if self._pool is None else self._pool.submit(fn, *args).result()


class EmbedWorker:
    """One engine in one Ray actor. Wrapped with `ray.remote` by the pool (see `pool.py`)."""

    def __init__(self, engine_config, threads: int | None, model_spec=None, inline: bool = False):
        if threads:
            # The tokenizer's Rust pool would otherwise start one thread per core of the node,
            # oversubscribing the cores reserved for this actor (docs/DESIGN.md: deadly with torch).
            os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
        # `inline`: engine calls run on the caller's thread (the driver's own process, local.py).
        self._on_engine_thread = EngineThread(inline)
        self.lock = threading.Lock()
        self._run_key, self._run = None, None  # the current run: its ObjectRef hex (or context), _Run
        self._run_lock = threading.Lock()  # the two first calls of a run share one _Run (its footers, manifest)
        self.engine, self._built_from = None, None
        self._build(engine_config, model_spec)

    def build(self, engine_config, model_spec=None) -> dict:
        """Build the engine from `engine_config` (and `model_spec`, the model's files for this
        node: `pipeline/execution/model_sync.py`) unless it already is; returns `info()`.

        A warm actor given other engine settings is rebuilt here rather than replaced: the
        process, its imports (seconds of CPU) and its threads stay; the old model is dropped
        before the new one loads, so one model at a time is in memory."""
        self._build(engine_config, model_spec)
        return self.info()

    def _build(self, engine_config, model_spec) -> None:
        key = (engine_config, model_spec and model_spec.digest)
        with self.lock:
            if key != self._built_from:
                if self.engine is not None:
                    self.engine = self._built_from = None
                    gc.collect()  # the old model's memory (a GPU's too) is free before the new one's profile
                if model_spec is not None:
                    engine_config = dataclasses.replace(engine_config, model=ensure_local_model(model_spec))
                self.model_path = engine_config.model
                self.engine = self._on_engine_thread(Engine, engine_config)
                self._built_from = key

    def engine_fingerprint(self) -> dict:
        """The engine's part of the run fingerprint (model hash, pooling, dims, ...)."""
        return self.engine.fingerprint()

    def info(self) -> dict:
        import torch
        return {"pid": os.getpid(), "dim": self.engine.dim, "node": os.uname().nodename,
                "node_id": ray.get_runtime_context().get_node_id(),
                "actor_id": ray.get_runtime_context().get_actor_id(),
                "nice": os.nice(0), "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads(),
                "env": {k: os.environ.get(k) for k in _THREAD_ENV},
                "model_path": self.model_path}

    def sample(self, run_box: list, shards: list[Shard]) -> np.ndarray:
        """Embed the texts of `shards` that are not blank (the int8 calibration sample): (n, dim)."""
        run = self._context(run_box)
        column = run.config.text_column
        tables = [text_as_string(read_shard(run.source, s, [column]), run.config) for s in shards]
        texts = [t for table in tables for t in embeddable_texts(table, column)]
        with self.lock:
            return self._on_engine_thread(run.task.sample, self.engine, texts)

    def process(self, run_box: list, shard: Shard, probe: bool = False, bad: tuple = ()) -> dict:
        """Run the task on one shard; write its part (or return its outputs when there is no output folder).

        `run_box` is `[ObjectRef(RunContext)]`: boxed so Ray passes the reference, fetched once
        per run (and again after a restart) instead of being a constructor argument. While a
        failing shard is narrowed down (`pipeline/execution/narrow.py`), `probe` runs the task on a piece
        of it and returns only that it ran; `bad` lists (global row, reason) pairs that failed
        alone: recorded as bad rows, not run.
        """
        t0 = time.perf_counter()
        run = self._context(run_box)
        config = run.config
        table = text_as_string(read_shard(run.source, shard, config.input_columns), config)
        good, errors, keep = split_bad_rows(shard, table, config)
        if bad:
            good, errors, keep = _leave_out(shard, table, good, errors, keep, dict(bad), config)
        _crash_on_row(shard, bad)
        texts = [good.column(c).to_pylist() for c in config.text_columns]
        hashes = row_hashes(run.prompt, texts) if run.folder is not None else None
        mask, reused = run.reuse.split(shard, keep, good.num_rows) if run.reuse else (None, None)
        if reused is not None:  # incremental run: only the rows the previous output lacks
            texts = [list(itertools.compress(col, ~mask)) for col in texts]
        if config.spans_column:  # task="chunks": the caller's chunk spans, after the texts
            texts.append(good.column(config.spans_column).to_pylist())
        t1 = time.perf_counter()
        with self.lock:
            stats = self.engine.stats  # cumulative: this shard's share is after - before
            tokens0, truncated0, chunked0 = stats.tokens, stats.truncated, stats.chunked
            stages0 = stats.stage_seconds()
            start = time.perf_counter()
            try:
                outputs = self._on_engine_thread(run.task.compute, self.engine, texts)
            except TextTooLongError as e:
                if reused is not None:  # the index is into the embedded rows
                    e.index = int(np.flatnonzero(~mask)[e.index])
                raise self._too_long(config, shard, good, keep, e) from None
            seconds = time.perf_counter() - start
            # Taken before letting go: the other call waits on the lock and adds to them next.
            record = {"rows": good.num_rows, "tokens": stats.tokens - tokens0,
                      "truncated": stats.truncated - truncated0, "chunked": stats.chunked - chunked0,
                      "bad_rows": errors.num_rows, "embed_seconds": seconds,
                      "read_seconds": t1 - t0, "pid": os.getpid(),
                      "stages": {k: v - stages0[k] for k, v in stats.stage_seconds().items()}}
        if probe:
            return {"probe": True, "rows": good.num_rows}
        _crash_point(shard, "mid_shard")
        ids = self._ids(config, shard, good, keep)
        extra = good.select(list(config.passthrough_columns)) if config.passthrough_columns else None
        if run.folder is None:
            record.update(ids=ids, outputs=outputs, errors_list=errors.to_pylist())
            return record
        if config.id_column is not None:  # the finish step's id pass takes them from the driver
            record["id_batch"] = id_batch(ids, shard, keep)
        t2 = time.perf_counter()
        if run.task.output_rows is not None:  # several output rows per input row (chunks)
            rows = pa.array(run.task.output_rows(outputs))
            ids, extra = ids.take(rows), (extra.take(rows) if extra is not None else None)
            hashes = hashes.take(rows)
        quant = run.quantization() if run.task.quantized else None
        columns = merge(run.task.arrays(outputs, config.output_dtype, quant), reused, mask)
        columns[HASH_COLUMN] = hashes
        record["reused"] = int(mask.sum()) if reused is not None else 0
        part = task_part(ids, columns, extra, run.fingerprint, quant)
        record.update(run.folder.publish_part(shard.id, part, config.output_format))
        if run.task.output_rows is not None:  # "rows" stays the input rows embedded
            record.update(rows=good.num_rows, output_rows=part.num_rows)
        if errors.num_rows:
            record["errors"] = run.folder.publish_errors(shard.id, errors)
        record["write_seconds"] = time.perf_counter() - t2
        _crash_point(shard, "after_write")
        return record

    def _too_long(self, config: PipelineConfig, shard: Shard, good: pa.Table, keep, error) -> BadRowsError:
        """truncation="error" met a long text: name its input row and id (not retried)."""
        kept = np.flatnonzero(keep) if keep is not None else np.arange(good.num_rows)
        row = int(shard.row_offset + kept[error.index])
        ident = good.column(config.id_column)[error.index].as_py() if config.id_column else row
        return BadRowsError(
            f"{shard.describe()}: row {row} (id {ident!r}) cannot be embedded with "
            f"truncation='error': it is longer than max_length={error.max_length} tokens; shorten "
            "it, raise max_length, or pass truncation='truncate' or 'chunk' (--truncation)")

    def _context(self, run_box: list) -> "_Run":
        ref = run_box[0]  # ObjectRef(RunContext); in the driver's own process the RunContext (local.py)
        remote = isinstance(ref, ray.ObjectRef)
        key = ref.hex() if remote else ref  # a context is its own key, held here: compared by identity
        with self._run_lock:
            if (key != self._run_key) if remote else (key is not self._run_key):  # a new run
                context = ray.get(ref) if remote else ref
                if context.engine is not None:  # a no-op unless Ray restarted this actor
                    self._build(*context.engine)
                fingerprint = {"engine": self.engine.fingerprint(), **context.config.fingerprint()}
                self._run, self._run_key = _Run(context, fingerprint), key
            return self._run

    @staticmethod
    def _ids(config: PipelineConfig, shard: Shard, good: pa.Table, keep: np.ndarray | None) -> pa.Array:
        if config.id_column is not None:
            return good.column(config.id_column).combine_chunks()
        rows = np.arange(shard.row_offset, shard.row_offset + shard.num_rows, dtype=np.int64)
        return pa.array(rows if keep is None else rows[keep])


def _leave_out(shard: Shard, table: pa.Table, good: pa.Table, errors: pa.Table, keep, bad: dict,
               config: PipelineConfig):
    """(good, errors, keep) of `split_bad_rows` with the rows of `bad` (global row -> reason:
    they failed alone, `narrow.py`) moved from the rows to run to the error records."""
    keep = np.ones(table.num_rows, dtype=bool) if keep is None else keep.copy()
    local = np.array([r - shard.row_offset for r in sorted(bad)], dtype=np.int64)
    local = local[keep[local]]  # a row already bad (say, empty) keeps its first reason
    if not len(local):
        return good, errors, (None if keep.all() else keep)
    keep[local] = False
    rows = shard.row_offset + local
    ids = table.column(config.id_column).take(pa.array(local)).combine_chunks() \
        if config.id_column else pa.array(rows, pa.int64())
    more = errors_table(ids.cast(errors.schema.field("id").type), [shard.id] * len(local), rows,
                        [bad[int(r)] for r in rows])
    errors = pa.concat_tables([errors, more]).sort_by("row")
    return table.filter(pa.array(keep)), errors, keep


def _crash_on_row(shard: Shard, bad: tuple) -> None:
    """TEST-ONLY fault injection (tests/pipeline/test_pipeline_crash.py): when $PIPELINE_CRASH_FILE holds
    "row <N>", every call whose rows include global row N (and do not leave it out) SIGKILLs
    this actor: a row that kills its worker whenever it is run. Never set it outside tests."""
    path = os.environ.get(CRASH_FILE_ENV)
    if not path or not os.path.isfile(path):
        return
    with open(path) as f:
        armed = f.read().split()
    if len(armed) == 2 and armed[0] == "row" and int(armed[1]) not in {r for r, _ in bad} \
            and shard.row_offset <= int(armed[1]) < shard.row_offset + shard.num_rows:
        os.kill(os.getpid(), signal.SIGKILL)


_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "KMP_AFFINITY",
               "OMP_PROC_BIND", "LD_PRELOAD")


class _Run:
    """One run's state inside an actor: its context, fingerprint and quantization record."""

    def __init__(self, context: RunContext, fingerprint: dict):
        self.config, self.folder, self.source = context.config, context.folder, context.source
        self.task = TASKS[context.config.task]
        self.fingerprint = fingerprint
        self.prompt = fingerprint["engine"].get("prompt") or ""  # in every row's content hash
        self._reuse = None
        self._quant, self._quant_read = None, False  # the output's quantization record, read once

    @property
    def reuse(self) -> PreviousParts | None:
        """The previous output's rows this run copies (`reuse=`), or None."""
        if self._reuse is None and self.config.reuse and self.folder is not None:
            self._reuse = PreviousParts(self.config.reuse, self.folder, self.task.output_names)
        return self._reuse

    def quantization(self) -> dict | None:
        """The quantization record the driver committed to the output's manifest before dispatch."""
        if not self._quant_read and self.folder is not None:  # once per run, not per shard
            manifest = Manifest.load(self.folder, commits=False)  # the metadata only
            self._quant = manifest.data.get("quantization") if manifest else None
            if self._quant is None and self.config.output_dtype == "int8":
                raise RuntimeError(f"{self.folder.show('_manifest.json')} has no int8 calibration; the "
                                   "driver writes it before dispatch, so rerun to resume")
            self._quant_read = True
        return self._quant
