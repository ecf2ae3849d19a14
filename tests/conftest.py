"""Shared fixtures: one local Ray per pytest worker, shared by the modules that ask for it (no
dashboard, 2 CPUs: docs/DESIGN.md; tests/shared_ray.py).

`make test` runs the suite on three pytest-xdist workers (`-n 3 --dist loadfile`: a file's tests
stay on one worker, so module fixtures are built once; three on two cores, because a worker often
waits on a subprocess, a Ray start or a killed actor's restart). Each worker gets a Ray temp
folder of its own, so the cluster file one worker's Ray writes never sends another's `ray.init`
to it, and one torch thread.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import shared_ray


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    if "RAY_TMPDIR" not in os.environ:
        # short: Ray's socket paths have a length limit
        os.environ["RAY_TMPDIR"] = config._ray_tmp = tempfile.mkdtemp(prefix=f"r{worker}", dir="/tmp")
    # One torch thread per worker (and its subprocesses): two workers of two OpenMP threads on
    # two cores spin-wait on each other. Ray actors still get the threads of their CPUs.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def pytest_unconfigure(config):
    path = getattr(config, "_ray_tmp", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _stop_warm_actors():
    warm = sys.modules.get("pipeline.execution.warm")
    if warm is not None:
        warm.stop_actors()


@pytest.fixture(autouse=True)
def _warm_actors(request):
    """The engine actors `pipeline.run` keeps warm (pipeline/execution/warm.py) stay from test to
    test and module to module while this worker's shared Ray lives, as in a notebook: a later run
    takes them when its worker settings are the same (its engine rebuilt in place when only the
    engine settings differ). They hold the shared Ray's CPUs: a test that needs them free (a CLI
    driver or plain Ray work on that Ray) calls `pipeline.shutdown()` first. A module that sets
    `KEEP_WARM = False` has them stopped after each of its tests."""
    yield
    if not getattr(request.module, "KEEP_WARM", True):
        _stop_warm_actors()


@pytest.fixture(scope="module", autouse=True)
def _no_warm_actors_in_a_module_that_opts_out(request):
    """A module with `KEEP_WARM = False` (its own Ray work, e.g. Ray Data, needs the CPUs) starts
    with no engine actor left by an earlier module."""
    if not getattr(request.module, "KEEP_WARM", True):
        _stop_warm_actors()
    yield


@pytest.fixture(scope="session")
def _ray_session(tmp_path_factory):
    shared_ray.set_crash_file(str(tmp_path_factory.mktemp("crash") / "armed"))
    yield
    import ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """The worker's shared local Ray with 2 CPUs, for the whole module."""
    yield shared_ray.shared()


@pytest.fixture(scope="module")
def cluster(_ray_session):
    """The worker's shared local Ray, whose workers see $PIPELINE_CRASH_FILE (armed per test by
    writing it): (gcs address, crash file). Used by the crash and task kill-and-resume tests."""
    ray = shared_ray.shared()
    crash_file = Path(shared_ray.crash_file())
    crash_file.unlink(missing_ok=True)
    yield ray.get_runtime_context().gcs_address, crash_file
    crash_file.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def moto():
    """A moto S3 server on 127.0.0.1 for the module (tests/s3_server.py), with a `bucket`."""
    from s3_server import Moto
    server = Moto()
    server.fs().create_dir("bucket")
    yield server
    server.stop()
