"""The pool's workers, and the ones it starts mid-run: on nodes that join the cluster (elastic,
`num_workers="auto"`), and in place of a worker out of Ray restarts while a failing shard is
narrowed down to its bad rows (`narrow.py`). A worker started mid-run is "starting" until its
engine reports a fingerprint equal to the pool's, then takes shards like the others.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError

from .actor import EmbedWorker

log = logging.getLogger("pipeline")
DEPTH = 2  # shards per worker in flight: one embedding, one prefetched
ELASTIC_PERIOD_S = 2.0  # how often a pool that follows the cluster looks for new nodes


@dataclass
class Worker:
    """Driver-side bookkeeping of one actor."""

    index: int
    handle: object
    state: str = "alive"  # alive | probing | dead | lost, or starting (joined mid-run)
    inflight: int = 0
    restarts: int = 0
    shards: int = 0
    rows: int = 0
    tokens: int = 0
    busy: float = 0.0
    last_error: str = ""
    node: str = ""  # Ray node id of the actor's last start
    probing_since: float = 0.0  # monotonic time its actor was found dead
    alone: bool = False  # it runs a job that must run alone (narrow.Job.runs_alone)
    memory: str = ""  # why Ray killed it for memory (memory_kill.explain), if that was its last death


class Growth:
    """Starting workers mid-run; mixed into `pool.Pool` (its workers, tasks, elastic, spawn and
    engine_fingerprint fields)."""

    def follow(self, resources: dict, max_restarts: int, args: tuple) -> None:
        """Start workers on nodes that join the cluster during `run` (num_workers="auto"):
        `resources` per actor and constructor `args` as at `start`."""
        known = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        self.elastic = {"resources": resources, "args": args, "known": known, "next": 0.0,
                        "max_restarts": max_restarts}

    def _grow(self, queue: deque) -> None:
        """Every ELASTIC_PERIOD_S while shards wait: start workers on nodes that joined."""
        e = self.elastic
        if e is None or not queue or time.monotonic() < e["next"]:
            return
        e["next"] = time.monotonic() + ELASTIC_PERIOD_S
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        for node in ray.nodes():
            if not node.get("Alive") or node["NodeID"] in e["known"]:
                continue
            e["known"].add(node["NodeID"])
            fits = _workers_that_fit(node.get("Resources", {}), e["resources"])
            remote = ray.remote(EmbedWorker).options(
                max_restarts=e["max_restarts"], max_task_retries=0, max_concurrency=DEPTH,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                **e["resources"])
            for _ in range(fits):
                w = Worker(len(self.workers), remote.remote(*e["args"]), state="starting",
                           node=node["NodeID"])
                self.workers.append(w)
                self.tasks[w.handle.engine_fingerprint.remote()] = (w, None)
            log.info("node %s joined the cluster: %d new worker(s) starting there",
                     node["NodeID"][:12], fits)

    def _joined(self, worker: Worker, ref) -> None:
        """A worker started by `_grow` answered: it takes shards if its engine agrees."""
        try:
            fingerprint = ray.get(ref)
        except RayActorError as e:
            worker.state, worker.last_error = "lost", f"worker {worker.index} did not start: {_first_line(e)}"
            log.warning("%s", worker.last_error)
            return
        if fingerprint != self.engine_fingerprint:
            ray.kill(worker.handle, no_restart=True)
            worker.state = "lost"
            worker.last_error = (f"worker {worker.index} (node {worker.node[:12]}) refused: its engine's "
                                 f"fingerprint {fingerprint} differs from the run's; pin dtype= so "
                                 "every node computes alike")
            log.warning("%s", worker.last_error)
            return
        worker.state = "alive"

    def _replace(self, dead: Worker) -> None:
        """Start a new actor (a full restart budget) for `dead`, which ran out of Ray restarts
        while a shard was being narrowed down; it takes shards once its engine answers."""
        resources, max_restarts, args = self.spawn
        remote = ray.remote(EmbedWorker).options(
            max_restarts=max_restarts, max_task_retries=0, max_concurrency=DEPTH, **resources)
        w = Worker(len(self.workers), remote.remote(*args), state="starting")
        self.workers.append(w)
        self.tasks[w.handle.engine_fingerprint.remote()] = (w, None)
        log.warning("worker %d ran out of restarts while a shard was narrowed down: worker %d "
                    "replaces it", dead.index, w.index)


def _workers_that_fit(total: dict, per_worker: dict) -> int:
    """How many actors asking `per_worker` (num_cpus / num_gpus) a node with `total` holds."""
    counts = [int(total.get(key, 0) / need + 1e-9) for key, need in
              (("CPU", per_worker.get("num_cpus", 1)), ("GPU", per_worker.get("num_gpus", 0))) if need]
    return max(0, min(counts)) if counts else 0


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else repr(e)

