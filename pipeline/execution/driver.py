"""The driver: plan, resume, dispatch to the actor pool, commit (docs/DESIGN.md steps 1-6; 7 is finish.py).

The driver never reads rows: it plans over row counts from metadata, ships the source to the
actors, and receives back only small per-shard records (or, with no output folder, the vectors
of in-memory inputs).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np
import ray

from workers import EngineConfig

from ..config import PipelineConfig
from ..errors import FingerprintMismatch, InputError, RunInterrupted
from ..inputs.shards import ShardPlan, calibration_shards, default_shard_rows, plan_record
from ..inputs.source_checks import check_input_string
from ..inputs.sources import check_schema, open_source, peek_schema
from ..inputs.validate import check_model
from ..output import part_size, quantize
from ..output.finish import RunResult, finish, kept_rows
from ..output.id_spool import IdSpool
from ..output.manifest import MANIFEST_NAME, Manifest, check_resumable, crash_point
from ..output.output_folder import OutputFolder, absolute, is_uri, redact
from ..output.progress import Progress, RunStats, WorkerStats
from ..tasks import TASKS, memory_results
from . import cluster, rerun, reuse, warm
from .local import LocalPool
from .model_sync import model_spec
from .pool import Pool

log = logging.getLogger("pipeline")
MAX_CPU_THREADS = 8


def execute(data, output, config: PipelineConfig, engine_options: dict, keep_warm: bool = True) -> RunResult:
    """Run the pipeline with validated configs (see `pipeline.run` for the documented entry)."""
    EngineConfig(**engine_options)  # validates the engine options before anything starts
    if engine_options.get("profile_dir"):
        # Actors may run in another working directory: a relative trace folder is the driver's.
        engine_options = {**engine_options, "profile_dir": absolute(engine_options["profile_dir"])}
    t0 = time.perf_counter()
    # File inputs are planned before Ray starts, so a wrong path fails at once; in-memory ones
    # after, so they go to the object store.
    check_input_string(data)  # a text passed alone is no path: say so, not "output= is required"
    if output is None and _is_path(data):
        raise InputError("output= is required for file inputs (the corpus may not fit in "
                         "memory); pass a folder, e.g. output='embeddings/'")
    source = open_source(data, config) if _is_path(data) else None
    if source is None and (schema := peek_schema(data, config)) is not None:
        check_schema(schema, config, where="table")  # missing columns: refused before Ray starts
    folder = OutputFolder.open(output) if output is not None else None
    if folder is not None:
        folder.check_usable()
    reuse.check_early(config, folder, TASKS[config.task])
    cluster.check_address(config.address)  # a dead address fails in seconds, before the model loads
    preview = _check_model_here(engine_options, config.address)
    if folder is not None and preview and not config.overwrite:
        earlier = _check_engine_preview(folder, preview)  # another run's settings: refused before Ray starts
        done = rerun.nothing_to_do(earlier, folder, source, config, engine_options, preview, t0)
        if done is not None:  # a finished output and the same settings: no Ray, no model load
            return done
    local = _runs_in_process(data, config, engine_options)  # small, in memory, no Ray here: local.py
    # A Ray this pipeline started; quiet unless progress was asked for (a notebook's one line).
    ours = not local and warm.connected(cluster.connect(config.address, quiet=config.progress is not True))
    pool = manifest = plan = reused = None
    finished = refused = False
    try:
        if source is None and type(data).__module__.startswith("ray.data"):
            # Executing a Ray Dataset needs CPUs that warm actors may hold all of (Ray Data
            # deadlocks when actors reserve every CPU: docs/DESIGN.md): stop them first.
            warm.stop_actors()
        source = source or open_source(data, config)
        spec = None if local else _model_spec(engine_options, joined=not ours)
        n_workers, threads, resources = ((1, config.threads_per_worker, {}) if local
                                         else _worker_plan(config, engine_options))
        manifest = _load_manifest(folder, config) if folder else None
        shards, plan = _plan(source, config, manifest, n_workers, engine_options)
        if manifest is not None:
            # The input and this config's part of the fingerprint (columns, output form) are
            # known now: a mismatch fails before any actor loads a model. The engine's part is
            # checked once the actors report it.
            check_resumable(manifest, {**manifest.fingerprint, **config.fingerprint()}, plan)
        todo = _pending(shards, manifest)
        engine_cfg = EngineConfig(**{"num_threads": threads, **engine_options})
        # Warm actors (or the in-process engine) of an earlier run with the same engine settings,
        # or new ones.
        actor_args = (engine_cfg, threads, spec)
        pool = warm.acquire_local(engine_cfg) if local else warm.acquire(
            max(1, min(n_workers, len(todo))), resources, config.max_restarts, actor_args)
        pool.begin(config, folder, source)
        if config.num_workers is None and not local:  # "auto": nodes that join mid-run get workers too
            pool.follow(resources, config.max_restarts, actor_args)
        fingerprint = pool.fingerprint(config)
        if folder:
            manifest = _prepare_output(folder, manifest, fingerprint, plan)
            reused = reuse.prepare(config, TASKS[config.task], folder, manifest, source, shards, fingerprint)
            _record_run(manifest, pool, source, config, engine_options, data)
            todo = _pending(shards, manifest)
            crash_point("plan", 0)
        progress = Progress(source.num_rows, source.num_rows - todo.rows(),
                            enabled=config.progress or (config.progress is None and folder is not None),
                            task=config.task)
        collector = _Collector(manifest, progress, source.num_rows, pool.dim, config.task)
        startup = time.perf_counter() - t0
        pool.run(todo, collector.done, collector.tick)
        if manifest is not None:
            manifest.flush()  # the last batch (object stores): committed before the finish step
        progress.close()
        stats = collector.stats(pool, time.perf_counter() - t0, startup, len(shards) - len(todo))
        result = finish(stats, collector, manifest, folder, config, TASKS[config.task].first_rows)
        if folder:
            reuse.finish(manifest, folder, reused, config.progress or config.progress is None)
        finished = True
        return result
    except KeyboardInterrupt:  # Ctrl-C (or the CLI's SIGTERM): one line, not Ray's frames
        raise _interrupted(manifest, folder, plan) from None
    except (InputError, FingerprintMismatch):
        refused = True  # the input or the settings, not the actors: the caller fixes them and calls again
        raise
    finally:
        if manifest is not None:
            manifest.save(force=True)
        # A clean run leaves its actors warm for the next call (pipeline/execution/warm.py), and so
        # does one refused for its input or settings while every actor is alive and idle; a failed
        # one stops them (and a Ray the pipeline started, when no actor is left warm).
        warm.release(pool, keep=(finished or refused) and keep_warm)


def _interrupted(manifest: Manifest | None, folder: OutputFolder | None, plan: dict | None):
    """The RunInterrupted of a run stopped by Ctrl-C: what is kept and how to go on."""
    if folder is None:
        return RunInterrupted("interrupted: an in-memory run keeps nothing; call it again")
    if manifest is not None:
        try:
            manifest.flush()  # what finished before the interrupt is committed
        except OSError:
            pass  # the message still says what is committed
    done = len(manifest.shards) if manifest is not None else 0
    of = f" of {plan['num_shards']}" if plan else ""
    return RunInterrupted(f"interrupted: {done}{of} shards committed in {folder}; "
                          "rerun with the same output to resume")


def _plan(source, config: PipelineConfig, manifest: Manifest | None, n_workers: int,
          engine_options: dict | None = None):
    """(shards, plan record); a resumed run keeps the shard size recorded in its manifest. Token
    outputs' shards are capped so a part stays under `max_part_bytes` (`part_size.py`)."""
    if manifest:
        rows = manifest.plan["shard_rows"]
    else:
        rows = config.shard_rows or default_shard_rows(source.num_rows, n_workers)
        per_row = part_size.row_bytes(config.task, config.output_dtype, engine_options or {})
        rows = part_size.bounded_rows(rows, config.max_part_bytes, per_row)
    shards = ShardPlan(source.fragments, rows)  # numbers, not a Shard object per shard
    return shards, plan_record(source, rows, len(shards))


def _pending(shards: ShardPlan, manifest: Manifest | None) -> ShardPlan:
    """The shards not committed yet, in order."""
    todo = np.arange(len(shards))
    if manifest is not None:
        todo = np.setdiff1d(todo, manifest.committed(), assume_unique=True)
    return shards.subset(todo)


def _is_path(data) -> bool:
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(p, os.PathLike) for p in data)


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
                    "compete for cores (oversubscription is slow: docs/DESIGN.md)", n, threads, cpus)
    # Never reserve more than the cluster has, or the extra actors would wait forever.
    return n, threads, {"num_cpus": min(float(threads), cpus / n)}


def _load_manifest(folder: OutputFolder, config: PipelineConfig) -> Manifest | None:
    """The output's manifest; with overwrite, none: the previous run's files are deleted first
    (unread, so a manifest this version cannot read is replaced too)."""
    folder.create()
    if config.overwrite and folder.exists(MANIFEST_NAME):
        folder.remove(folder.stray_files(keep=set()) + [MANIFEST_NAME])
    return Manifest.load(folder)


def _prepare_output(folder: OutputFolder, manifest: Manifest | None, fingerprint: dict,
                    plan: dict) -> Manifest:
    """Check the fingerprint, forget committed parts that vanished, remove uncommitted parts,
    and start a new generation of the commit log (its records so far folded into segments).
    One listing of the folder gives every size: no request per part on object stores."""
    listing = folder.sizes()
    if manifest is None:
        manifest = Manifest.new(folder, fingerprint, plan)
    else:
        check_resumable(manifest, fingerprint, plan)
        for shard_id, record in list(manifest.records()):
            if listing.get(record["path"]) != record["bytes"]:
                log.warning("part %s of shard %s is missing or changed; it will be redone",
                            record["path"], shard_id)
                manifest.uncommit(shard_id)
    folder.remove_strays(keep=manifest.files(), listing=listing)
    manifest.fold()
    return manifest


def _record_run(manifest: Manifest, pool: Pool | LocalPool, source, config: PipelineConfig,
                engine_options: dict, data) -> None:
    """Add what reading and searching the output needs to the manifest: the quantization record
    (int8: calibrated now by one actor on a sample of the corpus; a resumed run keeps the stored
    one), the engine options (model as an absolute path) and the input path (file inputs)."""
    if "quantization" not in manifest.data:
        calibration = None
        if config.output_dtype == "int8":
            windows = calibration_shards(source.fragments)
            sample = pool.sample(windows)
            calibration = quantize.calibrate(sample)
        # It describes the `embedding` column: bge-m3's is float32 whatever its tokens' dtype.
        stored = config.output_dtype if TASKS[config.task].quantized else "float32"
        manifest.put("quantization", quantize.record(stored, pool.dim, calibration))
    manifest.put("engine_options", rerun.recorded_options(engine_options))
    paths = [data] if isinstance(data, (str, os.PathLike)) else data if _is_path(data) else None
    paths = [redact(absolute(p)) for p in paths] if paths else None
    manifest.put("input", paths)
    manifest.save(force=True)


class _NONE:  # a pool that narrows nothing down (the in-process one): no isolated rows
    isolated = ()


class _Collector:
    """Receives finished shards: commits them to the manifest, or keeps in-memory outputs."""

    def __init__(self, manifest: Manifest | None, progress: Progress, total_rows: int, dim: int,
                 task: str = "embed"):
        self.manifest, self.progress, self.total_rows, self.dim = manifest, progress, total_rows, dim
        self.task = TASKS[task]
        self.rows = self.tokens = self.truncated = self.chunked = self.bad_rows = self.shards = 0
        self.parts = {}
        self.spool = IdSpool()  # the committed shards' ids, for the finish step's id pass
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
            self.parts[shard.index] = (shard, record.pop("outputs"), record.pop("errors_list"),
                                       record.pop("ids"))
            return
        crash_point("after_publish", self.shards)  # the part is published, not yet committed
        ids = record.get("id_batch")
        record = {k: v for k, v in record.items() if k not in ("pid", "id_batch")}
        self.manifest.commit(shard.id, {**record, "row_offset": shard.row_offset,
                                        "input_rows": shard.num_rows, "worker": worker.index})
        if ids is not None:
            self.spool.add(shard.id, ids)
        # other shards are still running; a batch of commits (object stores) is written first
        crash_point("mid_run", self.shards, before=self.manifest.flush)

    def tick(self) -> None:
        """Called while the driver waits: the progress line, and a batch of commits that waited."""
        self.progress.tick()
        if self.manifest is not None:
            self.manifest.tick()

    def results(self) -> dict:
        """In-memory result: RunResult fields (e.g. `embeddings`, `scores`) in input order, NaN
        (or None) rows for skipped bad rows; see `pipeline/tasks.py`."""
        parts = [(kept_rows(shard, errors), outputs) for shard, outputs, errors, _ in self.parts.values()]
        return memory_results(self.task, parts, self.total_rows, self.dim)

    def stats(self, pool: Pool | LocalPool, seconds: float, startup: float, resumed: int) -> RunStats:
        committed = int(self.manifest.shards.total("rows")) if self.manifest else self.rows
        workers = tuple(WorkerStats(w.index, w.shards, w.rows, w.tokens, w.busy, w.restarts,
                                    w.last_error if w.state == "lost" else "") for w in pool.workers)
        return RunStats(rows=self.rows, rows_total=committed, tokens=self.tokens, seconds=seconds,
                        startup_seconds=startup, truncated=self.truncated, bad_rows=self.bad_rows,
                        shards=self.shards, resumed_shards=resumed, retries=pool.retries,
                        workers=workers, chunked=self.chunked, stages=dict(self.stages),
                        isolated_rows=tuple(r for r, _ in getattr(pool, "narrowing", _NONE).isolated),
                        **self.io)


def _runs_in_process(data, config: PipelineConfig, engine_options: dict) -> bool:
    """An in-memory input of at most `in_process_rows` rows, when no Ray runs in this process
    and none is configured (address, RAY_ADDRESS, `ray start`'s cluster file): the pipeline
    would start a local Ray only for it, so one engine in this process runs it instead. A model
    URI goes through Ray (its node cache is `model_sync`'s, which works on Ray's nodes)."""
    if not config.in_process_rows or config.num_workers not in (None, 1) or _is_path(data):
        return False
    if is_uri(engine_options.get("model") or ""):
        return False
    if type(data).__module__.startswith("ray.data") or ray.is_initialized():
        return False
    if cluster.resolve(config.address)[1] != "default":  # explicit "local", or a cluster to join
        return False
    try:
        rows = len(data)
    except TypeError:
        return False
    return rows <= config.in_process_rows


def _check_model_here(engine_options: dict, address: str | None) -> dict:
    """Open the model folder before Ray starts; returns the engine fingerprint's fields it
    decides (`check_model`), or {} where it is not opened here. A URI is opened by each node
    (after the driver lists and hashes it, `model_sync`); on a cluster (RAY_ADDRESS or an
    address) a local folder this node does not have is left for the actors' nodes to open (and
    report)."""
    model = engine_options.get("model")
    if model and is_uri(model):
        return {}
    remote = os.environ.get("RAY_ADDRESS") or address not in (None, cluster.LOCAL)
    if model and remote and not os.path.exists(os.path.expanduser(model)):
        return {}
    return check_model(engine_options)


def _check_engine_preview(folder: OutputFolder, preview: dict) -> Manifest | None:
    """Refuse, before Ray starts, to resume an output whose engine fingerprint differs from
    this run's in a field the model folder and options decide (`preview`): the same
    FingerprintMismatch the actors' full fingerprint would raise a few seconds later, after Ray
    and a model load. Fields the output does not record are left to that later check. Returns
    the output's manifest as read (metadata only), or None."""
    manifest = Manifest.load(folder, commits=False)  # `_manifest.json` alone: no commit log read
    recorded = (manifest.fingerprint.get("engine") or {}) if manifest is not None else {}
    preview = json.loads(json.dumps(preview))  # as the manifest holds it
    old = {k: recorded[k] for k in preview if k in recorded}
    if old != {k: preview[k] for k in old}:
        check_resumable(manifest, {**manifest.fingerprint, "engine": {**recorded, **preview}}, manifest.plan)
    return manifest


def _model_spec(engine_options: dict, joined: bool):
    """What each node needs to make its copy of the model (`pipeline/execution/model_sync.py`), or None
    where the actors open the path as given: the bundled model (installed on every node), a
    local folder when this driver started Ray itself (every worker is on this machine), and one
    the driver does not have on a cluster (the actors' nodes must have it)."""
    model = engine_options.get("model")
    if model and is_uri(model):
        return model_spec(model)
    if model and joined and os.path.isdir(os.path.expanduser(model)):
        return model_spec(os.path.expanduser(model))
    return None


def engine_option_names() -> set[str]:
    """Keyword arguments of `pipeline.run` that go to the engine (`workers.EngineConfig`)."""
    return {f.name for f in dataclasses.fields(EngineConfig)}

