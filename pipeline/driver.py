"""The driver: plan, resume, dispatch to the actor pool, commit, summarise (DESIGN.md steps 1-7).

The driver never reads rows: it plans over row counts from metadata, ships the source to the
actors, and receives back only small per-shard records (or, with no output folder, the vectors
of in-memory inputs).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import ray

from .config import PipelineConfig
from .manifest import Manifest, check_resumable
from .pool import Pool
from .progress import Progress, RunStats, WorkerStats, summary_table
from .shards import default_shard_rows, plan_record, plan_shards
from .sources import open_source
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
        embeddings: with no output folder, an (n, dim) array in input order (rows skipped as bad
            are NaN); else None — use `pipeline.read_embeddings(result.output)`.
        errors: with no output folder, the skipped bad rows as {"row", "id", "reason"} dicts.
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
    t0 = time.perf_counter()
    # File inputs are planned before Ray starts, so a wrong path fails at once; in-memory ones
    # after, so they go to the object store.
    if output is None and _is_path(data):
        raise ValueError("output= is required for file inputs (the corpus may not fit in "
                         "memory); pass a folder, e.g. output='embeddings/'")
    source = open_source(data, config) if _is_path(data) else None
    started_ray = _ensure_ray()
    pool = manifest = None
    try:
        source = source or open_source(data, config)
        n_workers, threads, resources = _worker_plan(config, engine_options)
        target = resolve_output(output) if output is not None else None
        manifest = _load_manifest(target, config) if target else None
        shards, plan = _plan(source, config, manifest, n_workers)
        todo = _pending(shards, manifest)
        engine_cfg = EngineConfig(**{"num_threads": threads, **engine_options})
        pool = Pool.start(max(1, min(n_workers, len(todo))), resources, config.max_restarts,
                          config.max_retries, source, (engine_cfg, config, target, threads))
        fingerprint = pool.fingerprint()
        if target:
            manifest = _prepare_output(target, manifest, fingerprint, plan)
            todo = _pending(shards, manifest)
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
    """Mark the manifest complete, print the summary, build the result."""
    if manifest:
        manifest.finish(stats.to_dict())
        manifest.save(force=True)
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


class _Collector:
    """Receives finished shards: commits them to the manifest, or keeps in-memory vectors."""

    def __init__(self, manifest: Manifest | None, progress: Progress, total_rows: int, dim: int):
        self.manifest, self.progress, self.total_rows, self.dim = manifest, progress, total_rows, dim
        self.rows = self.tokens = self.truncated = self.bad_rows = self.shards = 0
        self.parts, self.errors = {}, []

    def done(self, shard, worker, record: dict) -> None:
        worker.shards, worker.rows = worker.shards + 1, worker.rows + record["rows"]
        worker.tokens, worker.busy = worker.tokens + record["tokens"], worker.busy + record["embed_seconds"]
        self.rows, self.tokens = self.rows + record["rows"], self.tokens + record["tokens"]
        self.truncated += record["truncated"]
        self.bad_rows += record["bad_rows"]
        self.shards += 1
        self.progress.update(record["rows"] + record["bad_rows"], record["tokens"])
        if self.manifest is None:
            self.parts[shard.index] = (shard, record.pop("vectors"), record.pop("errors_list"))
            self.errors.extend(self.parts[shard.index][2])
            return
        record = {k: v for k, v in record.items() if k not in ("pid",)}
        self.manifest.commit(shard.id, {**record, "row_offset": shard.row_offset,
                                        "input_rows": shard.num_rows, "worker": worker.index})
        self.manifest.save()

    def matrix(self) -> np.ndarray:
        """In-memory result: vectors in input order, NaN rows for skipped bad rows."""
        out = np.full((self.total_rows, self.dim), np.nan, dtype=np.float32)
        for shard, vectors, errors in self.parts.values():
            rows = np.arange(shard.row_offset, shard.row_offset + shard.num_rows)
            if errors:
                rows = np.setdiff1d(rows, [e["row"] for e in errors])
            out[rows] = vectors
        return out

    def stats(self, pool: Pool, seconds: float, startup: float, resumed: int) -> RunStats:
        committed = sum(r["rows"] for r in self.manifest.shards.values()) if self.manifest else self.rows
        workers = tuple(WorkerStats(w.index, w.shards, w.rows, w.tokens, w.busy, w.restarts) for w in pool.workers)
        return RunStats(rows=self.rows, rows_total=committed, tokens=self.tokens, seconds=seconds,
                        startup_seconds=startup, truncated=self.truncated, bad_rows=self.bad_rows,
                        shards=self.shards, resumed_shards=resumed, retries=pool.retries,
                        workers=workers)


def engine_option_names() -> set[str]:
    """Keyword arguments of `pipeline.run` that go to the engine (`workers.EngineConfig`)."""
    from workers import EngineConfig
    return {f.name for f in dataclasses.fields(EngineConfig)}

