"""The driver: plan, resume, dispatch to the actor pool, commit, summarise (DESIGN.md steps 1-7).

The driver never reads rows: it plans over row counts from metadata, ships the source to the
actors, and receives back only small per-shard records (or, with no output folder, the vectors
of in-memory inputs).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from . import quantize
from .config import PipelineConfig
from .manifest import Manifest, check_resumable
from .pool import Pool
from .progress import Progress, RunStats, WorkerStats, summary_table
from .shards import default_shard_rows, plan_record, plan_shards
from .sources import open_source
from .validate import check_model, check_output_folder, duplicate_id_errors, write_errors_file
from .writer import resolve_output, stray_files

log = logging.getLogger("pipeline")
MAX_CPU_THREADS = 8


@dataclass(frozen=True)
class RunResult:
    """What `pipeline.run` returns.

    Attributes:
        output: the output folder (None when the vectors came back in memory).
        stats: a `RunStats` (rows, tokens, seconds, tokens_per_s, per-worker, truncated, bad rows).
        manifest: the output's manifest as a dict (None without an output folder).
        embeddings: with no output folder, an (n, dim) array in input order (bad rows are NaN);
            else None — use `pipeline.read_embeddings(result.output)`.
        errors: with no output folder, the reported rows as {"id", "shard", "row", "reason"}
            dicts in row order (bad texts, and rows whose id repeats); else in the output's
            `_errors.parquet`.
    """

    output: str | None
    stats: RunStats
    manifest: dict | None
    embeddings: np.ndarray | None = None
    errors: tuple = ()


def execute(data, output, config: PipelineConfig, engine_options: dict) -> RunResult:
    """Run the pipeline with validated configs (see `pipeline.run` for the documented entry)."""
    from workers import EngineConfig  # validates the engine options before anything starts
    EngineConfig(**engine_options)
    if engine_options.get("profile_dir") and "://" not in engine_options["profile_dir"]:
        # Actors may run in another working directory: a relative trace folder is the driver's.
        engine_options = {**engine_options, "profile_dir": os.path.abspath(engine_options["profile_dir"])}
    t0 = time.perf_counter()
    # File inputs are planned before Ray starts, so a wrong path fails at once; in-memory ones
    # after, so they go to the object store.
    if output is None and _is_path(data):
        raise ValueError("output= is required for file inputs (the corpus may not fit in "
                         "memory); pass a folder, e.g. output='embeddings/'")
    source = open_source(data, config) if _is_path(data) else None
    if output is not None:
        check_output_folder(*resolve_output(output))
    _check_model_here(engine_options)
    started_ray = _ensure_ray()
    pool = manifest = None
    try:
        source = source or open_source(data, config)
        n_workers, threads, resources = _worker_plan(config, engine_options)
        target = resolve_output(output) if output is not None else None
        manifest = _load_manifest(target, config) if target else None
        shards, plan = _plan(source, config, manifest, n_workers)
        if manifest is not None:
            # The input and this config's part of the fingerprint (columns, output form) are
            # known now: a mismatch fails before any actor loads a model. The engine's part is
            # checked once the actors report it.
            check_resumable(manifest, {**manifest.fingerprint, **config.fingerprint()}, plan)
        todo = _pending(shards, manifest)
        engine_cfg = EngineConfig(**{"num_threads": threads, **engine_options})
        pool = Pool.start(max(1, min(n_workers, len(todo))), resources, config.max_restarts,
                          config.max_retries, source, (engine_cfg, config, target, threads))
        fingerprint = pool.fingerprint()
        if target:
            manifest = _prepare_output(target, manifest, fingerprint, plan)
            _record_run(manifest, pool, source, config, engine_options, data)
            todo = _pending(shards, manifest)
            _crash_point("plan", 0)
        progress = Progress(source.num_rows, source.num_rows - sum(s.num_rows for s in todo),
                            enabled=config.progress)
        collector = _Collector(manifest, progress, source.num_rows, pool.dim)
        startup = time.perf_counter() - t0
        pool.run(todo, collector.done, progress.tick)
        progress.close()
        stats = collector.stats(pool, time.perf_counter() - t0, startup, len(shards) - len(todo))
        return _finish(stats, collector, manifest, target, config)
    finally:
        if manifest is not None:
            manifest.save(force=True)
        if pool is not None:
            pool.stop()
        if started_ray:
            ray.shutdown()


def _plan(source, config: PipelineConfig, manifest: Manifest | None, n_workers: int):
    """(shards, plan record); a resumed run keeps the shard size recorded in its manifest."""
    rows = manifest.plan["shard_rows"] if manifest else (
        config.shard_rows or default_shard_rows(source.num_rows, n_workers))
    shards = plan_shards(source.fragments, rows)
    return shards, plan_record(source, rows, len(shards))


def _pending(shards, manifest: Manifest | None):
    done = manifest.shards if manifest else {}
    return [s for s in shards if s.id not in done]


def _finish(stats: RunStats, collector, manifest, target, config: PipelineConfig) -> RunResult:
    """Report bad rows and duplicate ids (`_errors.parquet`, written before the manifest says
    complete), mark the manifest complete, print the summary, build the result."""
    if manifest:
        fs, folder = target
        for rel in stray_files(fs, folder, keep=manifest.files()):  # e.g. the part of an actor
            fs.delete_file(f"{folder}/{rel}")                        # that died before reporting
        bad_rows, duplicates = write_errors_file(fs, folder, manifest)
        stats = dataclasses.replace(stats, bad_rows_total=bad_rows, duplicate_ids=duplicates)
        manifest.finish(stats.to_dict())
        manifest.save(force=True)
    else:
        collector.errors, duplicates = collector.error_records(config.id_column is not None)
        stats = dataclasses.replace(stats, bad_rows_total=stats.bad_rows, duplicate_ids=duplicates)
    folder = target[1] if target else None
    if config.progress:
        print(summary_table(stats, folder, config.output_format), flush=True)
    return RunResult(output=folder, stats=stats, manifest=manifest.data if manifest else None,
                     embeddings=collector.matrix() if not target else None,
                     errors=tuple(collector.errors))


def _is_path(data) -> bool:
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(p, os.PathLike) for p in data)


def _ensure_ray() -> bool:
    """Connect to the cluster (RAY_ADDRESS, e.g. under `ray job submit`) or start a local Ray."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # No dashboard: 1 GB less memory and ~1 s faster (FACTS.md); jobs use `ray start`'s.
        ray.init(include_dashboard=False)
    return True


def _worker_plan(config: PipelineConfig, engine_options: dict) -> tuple[int, int | None, dict]:
    """(workers, torch threads per worker, Ray resources per actor) for this cluster."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    if gpus and engine_options.get("device", "auto") != "cpu":
        n = config.num_workers or gpus
        threads = config.threads_per_worker or max(1, min(MAX_CPU_THREADS, cpus // n))
        return n, threads, {"num_gpus": 1, "num_cpus": min(threads, cpus / n)}
    if config.num_workers:
        n = config.num_workers
        threads = config.threads_per_worker or max(1, cpus // n)
    else:
        threads = config.threads_per_worker or max(1, min(MAX_CPU_THREADS, cpus))
        n = max(1, cpus // threads)
    if n * threads > cpus:
        log.warning("%d workers x %d threads exceed the cluster's %d CPUs: the workers will "
                    "compete for cores (FACTS.md: oversubscription is slow)", n, threads, cpus)
    # Never reserve more than the cluster has, or the extra actors would wait forever.
    return n, threads, {"num_cpus": min(float(threads), cpus / n)}


def _load_manifest(target, config: PipelineConfig) -> Manifest | None:
    fs, folder = target
    fs.create_dir(folder, recursive=True)
    manifest = Manifest.load(fs, folder)
    if manifest is not None and config.overwrite:
        for rel in stray_files(fs, folder, keep=set()) + ["_manifest.json"]:
            fs.delete_file(f"{folder}/{rel}")
        return None
    return manifest


def _prepare_output(target, manifest: Manifest | None, fingerprint: dict, plan: dict) -> Manifest:
    """Check the fingerprint, forget committed parts that vanished, remove uncommitted parts."""
    fs, folder = target
    if manifest is None:
        manifest = Manifest.new(fs, folder, fingerprint, plan)
    else:
        check_resumable(manifest, fingerprint, plan)
        records = list(manifest.shards.items())
        infos = fs.get_file_info([f"{folder}/{r['path']}" for _, r in records])
        for (shard_id, record), info in zip(records, infos):
            if info.size != record["bytes"]:
                log.warning("part %s of shard %s is missing or changed; it will be redone",
                            record["path"], shard_id)
                manifest.uncommit(shard_id)
    for rel in stray_files(fs, folder, keep=manifest.files()):
        fs.delete_file(f"{folder}/{rel}")
    manifest.save(force=True)
    return manifest


def _record_run(manifest: Manifest, pool: Pool, source, config: PipelineConfig,
                engine_options: dict, data) -> None:
    """Add what reading and searching the output needs to the manifest: the quantization record
    (int8: calibrated now by one actor on a sample of the corpus; a resumed run keeps the stored
    one), the engine options (model as an absolute path) and the input path (file inputs)."""
    if "quantization" not in manifest.data:
        calibration = None
        if config.output_dtype == "int8":
            windows = quantize.calibration_shards(source.fragments)
            sample = ray.get(pool.workers[0].handle.sample.remote(pool.source_box, windows))
            calibration = quantize.calibrate(sample)
        manifest.put("quantization", quantize.record(config.output_dtype, pool.dim, calibration))
    options = dict(engine_options)
    if options.get("model") and "://" not in options["model"]:
        options["model"] = os.path.abspath(options["model"])
    manifest.put("engine_options", options)
    paths = [data] if isinstance(data, (str, os.PathLike)) else data if _is_path(data) else None
    paths = [p if "://" in p else os.path.abspath(p) for p in map(str, paths)] if paths else None
    manifest.put("input", paths)
    manifest.save(force=True)


class _Collector:
    """Receives finished shards: commits them to the manifest, or keeps in-memory vectors."""

    def __init__(self, manifest: Manifest | None, progress: Progress, total_rows: int, dim: int):
        self.manifest, self.progress, self.total_rows, self.dim = manifest, progress, total_rows, dim
        self.rows = self.tokens = self.truncated = self.chunked = self.bad_rows = self.shards = 0
        self.parts, self.errors = {}, []
        self.stages: dict[str, float] = {}
        self.io = {"read_seconds": 0.0, "write_seconds": 0.0}

    def done(self, shard, worker, record: dict) -> None:
        worker.shards, worker.rows = worker.shards + 1, worker.rows + record["rows"]
        worker.tokens, worker.busy = worker.tokens + record["tokens"], worker.busy + record["embed_seconds"]
        self.rows, self.tokens = self.rows + record["rows"], self.tokens + record["tokens"]
        self.truncated += record["truncated"]
        self.chunked += record.get("chunked", 0)
        self.bad_rows += record["bad_rows"]
        self.shards += 1
        for name, sec in record.get("stages", {}).items():
            self.stages[name] = self.stages.get(name, 0.0) + sec
        for key in self.io:
            self.io[key] += record.get(key, 0.0)
        self.progress.update(record["rows"] + record["bad_rows"], record["tokens"])
        if self.manifest is None:
            self.parts[shard.index] = (shard, record.pop("vectors"), record.pop("errors_list"),
                                       record.pop("ids"))
            return
        _crash_point("after_publish", self.shards)  # the part is published, not yet committed
        record = {k: v for k, v in record.items() if k not in ("pid",)}
        self.manifest.commit(shard.id, {**record, "row_offset": shard.row_offset,
                                        "input_rows": shard.num_rows, "worker": worker.index})
        self.manifest.save()
        _crash_point("mid_run", self.shards, self.manifest)  # other shards are still running

    def matrix(self) -> np.ndarray:
        """In-memory result: vectors in input order, NaN rows for skipped bad rows."""
        out = np.full((self.total_rows, self.dim), np.nan, dtype=np.float32)
        for shard, vectors, errors, _ in self.parts.values():
            out[_kept_rows(shard, errors)] = vectors
        return out

    def error_records(self, check_ids: bool) -> tuple[list[dict], int]:
        """In-memory run: (bad rows and, with an id column, rows of repeated ids, as dicts in row
        order; the number of repeated-id rows)."""
        parts = [self.parts[k] for k in sorted(self.parts)]
        bad = [e for _, _, errors, _ in parts for e in errors]
        if not check_ids or not parts:
            return sorted(bad, key=lambda e: e["row"]), 0
        ids = pa.concat_arrays([p[3] for p in parts])
        shard_ids = pa.array(np.concatenate([np.full(len(p[3]), p[0].index, np.int32) for p in parts]))
        rows = pa.array(np.concatenate([_kept_rows(s, errors) for s, _, errors, _ in parts]))
        duplicates = duplicate_id_errors(ids, shard_ids, rows).to_pylist()
        return sorted(bad + duplicates, key=lambda e: (e["row"], e["reason"])), len(duplicates)

    def stats(self, pool: Pool, seconds: float, startup: float, resumed: int) -> RunStats:
        committed = sum(r["rows"] for r in self.manifest.shards.values()) if self.manifest else self.rows
        workers = tuple(WorkerStats(w.index, w.shards, w.rows, w.tokens, w.busy, w.restarts) for w in pool.workers)
        return RunStats(rows=self.rows, rows_total=committed, tokens=self.tokens, seconds=seconds,
                        startup_seconds=startup, truncated=self.truncated, bad_rows=self.bad_rows,
                        shards=self.shards, resumed_shards=resumed, retries=pool.retries,
                        workers=workers, chunked=self.chunked, stages=dict(self.stages), **self.io)


def _kept_rows(shard, errors: list[dict]) -> np.ndarray:
    """Global rows of a shard's embedded rows: its range minus its bad rows."""
    rows = np.arange(shard.row_offset, shard.row_offset + shard.num_rows, dtype=np.int64)
    return np.setdiff1d(rows, [e["row"] for e in errors]) if errors else rows


def _check_model_here(engine_options: dict) -> None:
    """Open the model folder before Ray starts; on a cluster (RAY_ADDRESS) a folder this node
    does not have is left for the actors' nodes to open (and report)."""
    model = engine_options.get("model")
    if model and os.environ.get("RAY_ADDRESS") and not os.path.exists(os.path.expanduser(model)):
        return
    check_model(engine_options)


CRASH_ENV = "PIPELINE_CRASH_AT"


def _crash_point(name: str, count: int, manifest: Manifest | None = None) -> None:
    """TEST-ONLY fault injection (tests/test_pipeline_crash.py): PIPELINE_CRASH_AT=plan,
    after_publish:N or mid_run:N SIGKILLs this driver at that point (N: the Nth finished shard;
    mid_run saves the manifest first). Never set it outside tests."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point == name and count == int(n or 0):
        if manifest is not None:
            manifest.save(force=True)
        os.kill(os.getpid(), signal.SIGKILL)


def engine_option_names() -> set[str]:
    """Keyword arguments of `pipeline.run` that go to the engine (`workers.EngineConfig`)."""
    from workers import EngineConfig
    return {f.name for f in dataclasses.fields(EngineConfig)}

