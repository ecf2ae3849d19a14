"""The actor pool and the pull-based dispatch loop of the driver.

Each worker (one Ray actor, one engine) holds at most DEPTH shards: one embedding, one being
read (prefetched). When a shard finishes, the driver hands that worker the next one, so a fast
worker takes more. A worker whose actor died is probed until Ray has restarted it; its shards go
back to the front of the queue and are redone whole (their parts never became visible). A shard
is retried at most `max_retries` times, then the run stops naming the shard and the error.

Node loss: when a node leaves, Ray restarts its actors elsewhere, and waits for ever when no node
has room. A worker whose restart is not done within `restart_timeout_s` is given up (killed for
good, state "lost", named in the summary); its shards were requeued when it died, so the
survivors take them. Once every shard is committed, a worker whose node left is not waited for
(it is named as lost at once); one that crashed on a live node gets its restart (bounded as
above). Only when no worker is left with shards still waiting does the run fail
(WorkersLostError; committed shards are kept, a rerun resumes).

A pool outlives one run when it is kept warm (`pipeline/execution/warm.py`): `start` takes only what the
actors are built from (engine settings, resources, restart budget); `begin` gives it one run
(its retry policy and the boxed `RunContext` passed with every call) and clears the per-run
bookkeeping, so each run's stats and restarts count that run only.

A shard that keeps failing on what may be one row's fault (its actor died, the task raised) is
narrowed down to the rows that fail alone, which become bad rows (`narrow.py`, issue 24); a
worker that runs out of restarts meanwhile is replaced (`pool_growth.py`).

Elastic workers (`num_workers="auto"`, `follow`, in `pool_growth.py`): every ELASTIC_PERIOD_S while shards wait, the
pool looks for nodes that joined after it started and starts as many workers on each as its
total resources hold (the same per-actor resources as at start, pinned to that node, so a worker
never straddles nodes). A new worker is "starting" until its engine reports a fingerprint equal
to the pool's (a node that resolves another dtype is refused, named in the summary), then takes
shards like the others.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import (ActorUnavailableError, GetTimeoutError, OutOfMemoryError, RayActorError,
                            RayTaskError)

from ..errors import BadRowsError, ShardFailedError, WorkersLostError, WorkerStartTimeout
from ..inputs.shards import Shard
from .actor import EmbedWorker, RunContext
from .memory_kill import describe, explain
from .narrow import Job, JobQueue, Narrowing, narrowable
from .pool_growth import DEPTH, Growth, Worker

log = logging.getLogger("pipeline")
START_TIMEOUT_S = 900


@dataclass
class Pool(Growth):
    """Actors plus the in-flight task table; `run` drives every shard to a committed record."""

    workers: list[Worker]
    max_retries: int = 2
    restart_timeout_s: float = 180.0
    run_box: list = field(default_factory=list)  # [ObjectRef(RunContext)], passed with every call
    dim: int = 0
    retries: int = 0
    tasks: dict = field(default_factory=dict)  # ref -> (worker, shard or None for a probe)
    engine_fingerprint: dict = field(default_factory=dict)
    elastic: dict | None = None  # set by `follow`: how to start workers on nodes that join
    spawn: tuple | None = None  # (resources, max_restarts, args) of `start`: to replace a worker
    narrowing: Narrowing = field(default_factory=Narrowing)  # shards narrowed down to bad rows

    @classmethod
    def start(cls, n: int, resources: dict, max_restarts: int, args: tuple) -> "Pool":
        """Start `n` actors with `resources` (num_cpus / num_gpus), each restarted by Ray at most
        `max_restarts` times, built from `args` (EmbedWorker's: engine config, threads, model
        spec), and wait until every engine is up."""
        pool = cls([], spawn=(resources, max_restarts, args))
        pool.grow(n)
        return pool

    def grow(self, n: int) -> None:
        """Start actors (as `spawn` says) until the pool holds `n`, and wait until every new
        engine is up: a warm pool asked for more workers keeps the ones it has."""
        resources, max_restarts, args = self.spawn
        remote = ray.remote(EmbedWorker).options(
            max_restarts=max_restarts, max_task_retries=0, max_concurrency=DEPTH, **resources)
        new = [Worker(i, remote.remote(*args)) for i in range(len(self.workers), n)]
        if not new:
            return
        self.workers = self.workers + new
        self._wait_started([w.handle.info.remote() for w in new], resources, new)
        self.engine_fingerprint = self._engine_fingerprint()

    def rebuild(self, args: tuple) -> None:
        """Rebuild every actor's engine from `args` (engine config, threads, model spec) in
        place (`EmbedWorker.build`): a warm pool given other engine settings keeps its processes."""
        resources, max_restarts, _ = self.spawn
        engine_config, _, spec = args
        self.spawn = (resources, max_restarts, args)
        self._wait_started([w.handle.build.remote(engine_config, spec) for w in self.workers], resources,
                           self.workers)
        self.engine_fingerprint = self._engine_fingerprint()

    def begin(self, config, folder, source) -> None:
        """Prepare for one run: its RunContext goes to the object store once, and the per-run
        bookkeeping (stats, restarts, errors, retries) starts from zero."""
        self.max_retries, self.restart_timeout_s = config.max_retries, config.restart_timeout_s
        engine_config, _, spec = self.spawn[2]  # a restarted actor rebuilds this engine
        self.run_box = [ray.put(RunContext(config, folder, source, (engine_config, spec)))]
        self.workers = [Worker(w.index, w.handle, node=w.node) for w in self.workers]
        self.retries, self.tasks, self.elastic = 0, {}, None  # `follow` again to grow this run
        self.narrowing = Narrowing()

    @property
    def healthy(self) -> bool:
        """Every actor alive and never restarted in the last run: fit to be kept warm (a
        restarted one would start the next run with less of its restart budget)."""
        return all(w.state == "alive" and not w.restarts for w in self.workers) and not self.tasks

    def _wait_started(self, refs: list, resources: dict, workers: list[Worker]) -> None:
        """Wait for each of `workers`' `info` (`refs`, in the same order), as its engine is up."""
        try:
            infos = ray.get(refs, timeout=START_TIMEOUT_S)
            self.dim = infos[0]["dim"]
            for w, info in zip(workers, infos):
                w.node = info.get("node_id", "")
        except GetTimeoutError:
            raise WorkerStartTimeout(
                f"{len(workers)} engine actor(s) needing {resources} each did not start in "
                f"{START_TIMEOUT_S} s; the cluster may not have enough resources "
                f"({ray.cluster_resources()}): lower num_workers or threads_per_worker") from None
        except (RayActorError, OutOfMemoryError, RayTaskError) as e:
            # The last line of Ray's report is the engine's own exception, e.g. a missing model
            # (RayTaskError: an engine rebuilt in place); a worker Ray killed for memory is said
            # so, with Ray's figures.
            lines = [line for line in str(e).splitlines() if line.strip()]
            detail = explain(str(e)) or (lines[-1] if lines else repr(e))
            raise WorkersLostError(f"an engine actor failed to start: {detail}") from None

    def sample(self, shards: list[Shard]):
        """The int8 calibration sample, embedded by the first actor (`EmbedWorker.sample`)."""
        return ray.get(self.workers[0].handle.sample.remote(self.run_box, shards))

    def _engine_fingerprint(self) -> dict:
        prints = ray.get([w.handle.engine_fingerprint.remote() for w in self.workers])
        if any(p != prints[0] for p in prints[1:]):
            raise WorkersLostError(f"engine actors disagree on the fingerprint: {prints}")
        return prints[0]

    def fingerprint(self, config) -> dict:
        """The run fingerprint: the engines' (every one agrees) and `config`'s part."""
        return {"engine": self.engine_fingerprint, **config.fingerprint()}

    def stop(self) -> None:
        for w in self.workers:
            ray.kill(w.handle, no_restart=True)

    def run(self, shards: list[Shard], on_done, on_tick) -> None:
        """Dispatch `shards` until each one's record went to `on_done(shard, worker, record)`."""
        queue, attempts = JobQueue(shards), {}
        while queue or self._busy():
            self._dispatch(queue)
            if not self.tasks:
                raise WorkersLostError(
                    f"no engine actor is left ({len(queue)} shard(s) still to do); committed shards "
                    "are kept, rerun to resume once the cluster has room. Last errors: "
                    + "; ".join(w.last_error for w in self.workers if w.last_error))
            ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=0.5)
            for ref in ready:
                worker, job = self.tasks.pop(ref)
                if job is None:
                    (self._joined if worker.state == "starting" else self._probed)(worker, ref)
                    continue
                worker.inflight, worker.alone = worker.inflight - 1, False
                record = self._result(ref, worker, job, queue, attempts)
                if record is not None:
                    on_done(job.shard, worker, record)
            self._give_up_stuck()
            self._grow(queue)
            on_tick()
        for w in self.workers:  # every shard is done: a worker whose node left is not waited for
            if w.state == "probing":
                self._give_up(w, "its node left the cluster and it was not restarted elsewhere "
                                 "before the last shard was done")

    def _busy(self) -> bool:
        """Shards in flight, or a worker restarting on a node that is still alive (a crashed
        actor, back in seconds: its restart is counted). A worker whose node left holds nothing."""
        if any(shard is not None for _, shard in self.tasks.values()):
            return True
        probing = [w for w in self.workers if w.state == "probing"]
        if not probing:
            return False
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        return any(w.node in alive for w in probing)

    @property
    def lost(self) -> list[Worker]:
        """Workers given up because Ray could not bring their actor back in time."""
        return [w for w in self.workers if w.state == "lost"]

    def _give_up_stuck(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.state == "probing" and now - w.probing_since > self.restart_timeout_s:
                why = f"its last death: {w.memory}" if w.memory else \
                    "its node left the cluster, or no node has room for it"
                self._give_up(w, f"Ray could not restart it within restart_timeout_s="
                                 f"{self.restart_timeout_s:g} s ({why})")

    def _give_up(self, worker: Worker, reason: str) -> None:
        """Stop waiting for `worker`: drop its probe, kill its actor for good, name it lost."""
        for ref in [r for r, (w, _) in self.tasks.items() if w is worker]:
            del self.tasks[ref]
        ray.kill(worker.handle, no_restart=True)
        worker.state = "lost"
        worker.last_error = f"worker {worker.index} (node {worker.node[:12] or '?'}) lost: {reason}"
        log.warning("%s; its shards went to the other workers", worker.last_error)

    def _dispatch(self, queue: JobQueue) -> None:
        for w in self.workers:
            while w.state == "alive" and w.inflight < DEPTH and queue and not w.alone:
                if queue[0].runs_alone and w.inflight:
                    break
                job = queue.popleft()
                self.tasks[w.handle.process.remote(self.run_box, job.shard, job.probe, job.bad)] = (w, job)
                w.inflight, w.alone = w.inflight + 1, job.runs_alone

    def _result(self, ref, worker: Worker, job: Job, queue: JobQueue, attempts: dict):
        shard = job.shard
        try:
            record = ray.get(ref)
            if job.probe:  # a piece of a shard being narrowed down ran through
                queue.extendleft(reversed(self.narrowing.passed(job)))
                return None
            return record
        except (RayActorError, OutOfMemoryError) as e:  # it died (OutOfMemoryError: Ray killed it)
            worker.last_error = f"worker {worker.index}: {describe(e)}"
            worker.memory = explain(str(e)) or ""
            if worker.state == "alive":  # the first of its shards to fail: probe until restarted
                worker.state, worker.probing_since = "probing", time.monotonic()
                self.tasks[worker.handle.info.remote()] = (worker, None)
            error = e
        except RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if isinstance(cause, BadRowsError):  # retrying cannot help: the input's fault
                raise BadRowsError(str(cause)) from None
            error = cause
        if job.probe and narrowable(error):  # cut the piece again, or it is one row: a bad row
            queue.extendleft(reversed(self.narrowing.failed(job, error)))
            return None
        if job.probe:  # a read error while narrowing: it names its file, no row is to blame
            raise ShardFailedError(f"{shard.describe()}: {type(error).__name__}: {error}") from None
        key = (shard.index, bool(job.bad))  # a narrowed shard's last run has retries of its own
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] > self.max_retries:
            # Maybe one row kills the worker: find it (max_retries=0 asks to fail at once).
            if narrowable(error) and not job.bad and self.max_retries > 0:
                queue.extendleft(reversed(self.narrowing.start(shard, error)))
                return None
            without = f" without the rows that fail alone ({', '.join(str(r) for r, _ in job.bad)})" \
                if job.bad else ""
            raise ShardFailedError(
                f"{shard.describe()} failed {attempts[key]} times{without}; last error: "
                f"{explain(str(error)) or f'{type(error).__name__}: {error}'}") from None
        self.retries += 1
        # After a worker died its other shard failed too: retried alone, a crash is its own.
        queue.appendleft(dataclasses.replace(job, alone=job.alone or isinstance(error, RayActorError)))
        return None

    def _probed(self, worker: Worker, ref) -> None:
        try:
            info = ray.get(ref)
        except ActorUnavailableError:  # still restarting (loading its engine): ask again
            self.tasks[worker.handle.info.remote()] = (worker, None)
            return
        except (RayActorError, OutOfMemoryError) as e:  # ActorDiedError: out of restarts
            worker.state, worker.last_error = "dead", f"worker {worker.index}: {describe(e)}"
            if self.narrowing.active and self.spawn is not None:  # each failing piece costs a
                self._replace(worker)  # crash: a new worker goes on
            return
        worker.state, worker.restarts = "alive", worker.restarts + 1
        worker.node = info.get("node_id", worker.node)
