"""The actor pool and the pull-based dispatch loop of the driver.

Each worker (one Ray actor, one engine) holds at most DEPTH shards: one embedding, one being
read (prefetched). When a shard finishes, the driver hands that worker the next one, so a fast
worker takes more. A worker whose actor died is probed until Ray has restarted it; its shards go
back to the front of the queue and are redone whole (their parts never became visible). A shard
is retried at most `max_retries` times, then the run stops naming the shard and the error.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from .actor import EmbedWorker
from .errors import BadRowsError, ShardFailedError, WorkersLostError, WorkerStartTimeout
from .shards import Shard

DEPTH = 2  # shards per worker in flight: one embedding, one prefetched
START_TIMEOUT_S = 900


@dataclass
class Worker:
    """Driver-side bookkeeping of one actor."""

    index: int
    handle: object
    state: str = "alive"  # alive | probing | dead
    inflight: int = 0
    restarts: int = 0
    shards: int = 0
    rows: int = 0
    tokens: int = 0
    busy: float = 0.0
    last_error: str = ""


@dataclass
class Pool:
    """Actors plus the in-flight task table; `run` drives every shard to a committed record."""

    workers: list[Worker]
    max_retries: int
    source_box: list = field(default_factory=list)  # [ObjectRef(Source)], passed with every shard
    dim: int = 0
    retries: int = 0
    tasks: dict = field(default_factory=dict)  # ref -> (worker, shard or None for a probe)

    @classmethod
    def start(cls, n: int, resources: dict, max_restarts: int, max_retries: int, source,
              args: tuple) -> "Pool":
        """Start `n` actors with `resources` (num_cpus / num_gpus) and wait until every engine is up."""
        remote = ray.remote(EmbedWorker).options(
            max_restarts=max_restarts, max_task_retries=0, max_concurrency=DEPTH, **resources)
        handles = [remote.remote(*args) for _ in range(n)]
        pool = cls([Worker(i, h) for i, h in enumerate(handles)], max_retries, [ray.put(source)])
        pool._wait_started(resources)
        return pool

    def _wait_started(self, resources: dict) -> None:
        refs = [w.handle.info.remote() for w in self.workers]
        try:
            self.dim = ray.get(refs, timeout=START_TIMEOUT_S)[0]["dim"]
        except GetTimeoutError:
            raise WorkerStartTimeout(
                f"{len(self.workers)} engine actor(s) needing {resources} each did not start in "
                f"{START_TIMEOUT_S} s; the cluster may not have enough resources "
                f"({ray.cluster_resources()}): lower num_workers or threads_per_worker") from None
        except RayActorError as e:
            # The last line of Ray's report is the engine's own exception, e.g. a missing model.
            lines = [line for line in str(e).splitlines() if line.strip()]
            raise WorkersLostError(f"an engine actor failed to start: {lines[-1] if lines else e!r}") from None

    def fingerprint(self) -> dict:
        """The run fingerprint; every engine must agree on it."""
        prints = ray.get([w.handle.fingerprint.remote() for w in self.workers])
        if any(p != prints[0] for p in prints[1:]):
            raise WorkersLostError(f"engine actors disagree on the fingerprint: {prints}")
        return prints[0]

    def stop(self) -> None:
        for w in self.workers:
            ray.kill(w.handle, no_restart=True)

    def run(self, shards: list[Shard], on_done, on_tick) -> None:
        """Dispatch `shards` until each one's record went to `on_done(shard, worker, record)`."""
        queue, attempts = deque(shards), {}
        while queue or self.tasks:
            self._dispatch(queue)
            if not self.tasks:
                raise WorkersLostError("every engine actor is dead; last errors: "
                                   + "; ".join(w.last_error for w in self.workers))
            ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=0.5)
            for ref in ready:
                worker, shard = self.tasks.pop(ref)
                if shard is None:
                    self._probed(worker, ref)
                    continue
                worker.inflight -= 1
                record = self._result(ref, worker, shard, queue, attempts)
                if record is not None:
                    on_done(shard, worker, record)
            on_tick()

    def _dispatch(self, queue: deque) -> None:
        for w in self.workers:
            while w.state == "alive" and w.inflight < DEPTH and queue:
                shard = queue.popleft()
                self.tasks[w.handle.process.remote(self.source_box, shard)] = (w, shard)
                w.inflight += 1

    def _result(self, ref, worker: Worker, shard: Shard, queue: deque, attempts: dict):
        try:
            return ray.get(ref)
        except RayActorError as e:
            worker.last_error = f"worker {worker.index}: {type(e).__name__}: {_first_line(e)}"
            if worker.state == "alive":  # the first of its shards to fail: probe until restarted
                worker.state = "probing"
                self.tasks[worker.handle.info.remote()] = (worker, None)
            error = e
        except RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if isinstance(cause, BadRowsError):  # retrying cannot help: the input's fault
                raise BadRowsError(str(cause)) from None
            error = cause
        attempts[shard.index] = attempts.get(shard.index, 0) + 1
        if attempts[shard.index] > self.max_retries:
            raise ShardFailedError(
                f"{shard.describe()} failed {attempts[shard.index]} times; last error: "
                f"{type(error).__name__}: {error}") from None
        self.retries += 1
        queue.appendleft(shard)
        return None

    def _probed(self, worker: Worker, ref) -> None:
        try:
            ray.get(ref)
        except ActorUnavailableError:  # still restarting (loading its engine): ask again
            self.tasks[worker.handle.info.remote()] = (worker, None)
            return
        except RayActorError as e:  # ActorDiedError: out of restarts
            worker.state, worker.last_error = "dead", f"worker {worker.index}: {_first_line(e)}"
            return
        worker.state, worker.restarts = "alive", worker.restarts + 1


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else repr(e)

