"""This pytest worker's one local Ray (2 CPUs, no dashboard; its workers see $PIPELINE_CRASH_FILE),
started on first use and kept across modules, those that do not ask for it included: a start and a
shutdown cost ~4 s of CPU, and the engine actors kept warm in it (pipeline/execution/warm.py) die
with it, so it is started once per worker instead of once per module. conftest's `ray_local` and
`cluster` fixtures hand it out; a test that restarts Ray on purpose starts the next one with
`start()`, so the modules after it keep using that one.

A module that needs no Ray in this process, or that builds its own multi-node cluster, shuts it
down; the next module that asks for it starts a new one. (Running those modules first, so that
each worker starts it once, was tried: no faster within the run-to-run spread, and it left the
longest module to the end; docs/BENCHMARKS.md, "Test suite time".)
"""
from __future__ import annotations

import os

_RAY: dict = {}  # the address of the shared Ray, and the crash file its workers see


def set_crash_file(path: str) -> None:
    _RAY["crash_file"] = path


def crash_file() -> str:
    return _RAY["crash_file"]


def start():
    """Start a new shared Ray (the current one, if any, is shut down) and return the ray module."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    os.environ["PIPELINE_CRASH_FILE"] = _RAY["crash_file"]  # inherited by the raylet and its workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    _RAY["address"] = ray.get_runtime_context().gcs_address
    return ray


def shared():
    """The shared Ray, started if none runs or if this process is connected to another one."""
    import ray
    if ray.is_initialized() and _RAY.get("address") == ray.get_runtime_context().gcs_address:
        return ray
    return start()
