"""Warm actors: a later `pipeline.run` in the same process reuses the running engine actors
(and the in-process engine of small in-memory runs, `pipeline/execution/local.py`: one warm engine at a
time, keyed by its `EngineConfig`).

A notebook calls `pipeline.run` again and again; starting Ray, the actors and their models each
time cost far more than embedding a few hundred texts (issue 16 item 4). So after a run that
ended cleanly the pool is kept, keyed by how its actors were started: the Ray session (the
driver's job id: actors die with the driver connection that owns them), the threads and Ray
resources of each actor and the restart budget. A later run with the same key takes it; when
its engine settings (`workers.EngineConfig`, the model) differ, each actor rebuilds its engine in
place (`EmbedWorker.build`: the model loads again, the process and its seconds of imports are
kept); when it asks for more workers than the pool holds, the missing ones are started beside
them (`Pool.grow`). Any other run stops the pool first (its actors are killed, so a GPU or the
CPUs they reserved are free for the new ones). Nothing about a run lives in an actor between
runs (see `pipeline/execution/actor.py`).

A run that failed, or whose actors restarted or were lost, does not keep its pool: the next run
starts fresh actors with their whole restart budget, so a crash never carries over. A run refused
for its input or settings (an `InputError` such as a bad row with on_bad_row="error", or a
`FingerprintMismatch` with the output folder) keeps it when every actor is alive, never
restarted and idle (`Pool.healthy`): the caller fixes the argument and calls again without
waiting for new actors and their models. One refused while other shards were still in flight
is not kept (those calls would run into the next run).

A local Ray the pipeline started itself stays up while actors are warm and is shut down with
them; a Ray the user started (or a cluster) is never shut down here. `pipeline.shutdown()`
releases everything, and so does interpreter exit (atexit). Warm actors keep their CPUs and
GPUs reserved: other Ray work of the session (Ray Data tasks) waits for them, so a run over a
Ray Dataset stops them before executing it, and a user's own Ray work should call
`pipeline.shutdown()` first.
"""
from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass

import ray

from .local import LocalPool
from .pool import Pool

log = logging.getLogger("pipeline")


@dataclass
class _Warm:
    key: tuple | None = None     # how the warm actors were started: threads, resources, restarts
    engine: tuple | None = None  # what their engines were built from: engine config, model digest
    pool: Pool | None = None
    session: str | None = None  # the Ray connection the pool (and an owned Ray) belongs to
    owns_ray: bool = False      # the pipeline started this Ray: shut it down with the pool
    local: LocalPool | None = None  # the in-process engine of small in-memory runs (local.py)


_state = _Warm()
_atexit_registered = False


def _session() -> str | None:
    """This driver's connection: its job id and its node's id (a new local Ray reuses job ids)."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return f"{context.get_job_id()}@{context.get_node_id()}"


def connected(started_ray: bool) -> bool:
    """Record the Ray session of this run (`started_ray`: the pipeline started it now); forget
    a pool of an earlier session (its actors died with it). True when the pipeline started this
    Ray, now or in an earlier call that kept it up for warm actors."""
    session = _session()
    if _state.session != session:
        if _state.pool is not None:
            log.info("the Ray session changed: the warm engine actors of the last one are gone")
        _state.key = _state.pool = None
        _state.session, _state.owns_ray = session, False
    _state.owns_ray = _state.owns_ray or started_ray
    return _state.owns_ray


def acquire(n: int, resources: dict, max_restarts: int, args: tuple) -> Pool:
    """The warm pool when its actors were started the same way (threads, resources, restart
    budget) (it is taken: a failing run cannot leave it behind), its engines rebuilt in place
    when `args` (engine config, threads, model spec) give other engine settings, and grown to
    `n` actors when it holds fewer; else a new pool of `n`, the warm one stopped first."""
    engine_config, threads, spec = args  # a spec's object-store refs are new each run: its digest
    key = (threads, tuple(sorted(resources.items())), max_restarts)
    engine = (engine_config, spec and spec.digest)
    pool, _state.pool, _state.local = _state.pool, None, None  # actors now: no in-process engine kept
    if pool is not None and _state.key == key:
        try:
            if engine == _state.engine:
                log.info("reusing %d warm engine actor(s)", len(pool.workers))
            else:
                log.info("engine settings changed: rebuilding the engines of %d warm actor(s) in place",
                         len(pool.workers))
                pool.rebuild(args)
            if len(pool.workers) < n:
                log.info("starting %d engine actor(s) beside the warm one(s)", n - len(pool.workers))
                pool.grow(n)
        except BaseException:
            pool.stop()  # half rebuilt, or not all started: not kept, not left holding CPUs
            raise
        _state.engine = engine
        return pool
    if pool is not None:
        log.info("worker settings changed: replacing the warm engine actors")
        pool.stop()
    _state.key, _state.engine = key, engine
    return Pool.start(n, resources, max_restarts, args)


def acquire_local(engine_config) -> LocalPool:
    """The in-process engine kept from an earlier run with the same engine settings, or a new
    one (the kept one is dropped first: one model in this process's memory at a time)."""
    local, _state.local = _state.local, None
    if local is not None and local.engine_config == engine_config:
        log.info("reusing the in-process engine")
        return local
    local = None  # dropped before the new model loads
    return LocalPool.start(engine_config)


def release(pool: Pool | LocalPool | None, keep: bool) -> None:
    """After a run: keep `pool` warm (`keep`), or stop it; with no actor left warm, a Ray the
    pipeline started is shut down, as before warm actors existed."""
    global _atexit_registered
    if isinstance(pool, LocalPool):
        _state.local = pool if keep else None
        return
    if pool is not None and keep and pool.healthy:
        _state.pool = pool
        if not _atexit_registered:  # registered after ray.init's own: runs before Ray's exit hook
            atexit.register(shutdown)
            _atexit_registered = True
        return
    if pool is not None:
        pool.stop()
    if _state.pool is None and _state.owns_ray:
        _shutdown_ray()


def stop_actors() -> None:
    """Stop the warm actors (not Ray): their CPUs and GPUs are free again."""
    pool, _state.pool, _state.key = _state.pool, None, None
    if pool is not None and _state.session == _session():
        pool.stop()


def warm_pool() -> Pool | None:
    """The pool kept for the next run, if any (tests and benchmarks look at its actors)."""
    return _state.pool if _state.session == _session() else None


def shutdown() -> None:
    """Stop the warm engine actors, and the local Ray when the pipeline started it; drop the
    in-process engine."""
    _state.local = None
    pool, _state.pool, _state.key = _state.pool, None, None
    if pool is not None and _state.session == _session():
        try:
            pool.stop()
        except Exception as e:  # noqa: BLE001 — at exit Ray may be going away already: nothing to free
            log.debug("stopping the warm actors: %s", e)
    if _state.owns_ray and _state.session == _session():
        _shutdown_ray()
    _state.session, _state.owns_ray = None, False


def _shutdown_ray() -> None:
    ray.shutdown()
    _state.session, _state.owns_ray = None, False
