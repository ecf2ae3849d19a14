"""Shared fixtures: one local Ray per test module that asks for it (no dashboard, 2 CPUs: docs/DESIGN.md).

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`: a file's tests
stay on one worker, so module fixtures are built once). Each worker gets a Ray temp folder of its
own, so the cluster file one worker's Ray writes never sends the other's `ray.init` to it.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and "RAY_TMPDIR" not in os.environ:
        # short: Ray's socket paths have a length limit
        os.environ["RAY_TMPDIR"] = config._ray_tmp = tempfile.mkdtemp(prefix=f"r{worker}", dir="/tmp")


def pytest_unconfigure(config):
    path = getattr(config, "_ray_tmp", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_warm_actors_after_a_test():
    """After each test, stop the engine actors `pipeline.run` kept warm (pipeline/execution/warm.py): they
    hold CPUs of the module's Ray, which the next test's actors or CLI driver need."""
    yield
    warm = sys.modules.get("pipeline.execution.warm")
    if warm is not None:
        warm.stop_actors()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for the whole module; shut down after its last test."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray whose workers see $PIPELINE_CRASH_FILE (armed per test by writing it):
    (gcs address, crash file). Used by the crash and task kill-and-resume tests."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    crash_file = tmp_path_factory.mktemp("crash") / "armed"
    os.environ["PIPELINE_CRASH_FILE"] = str(crash_file)  # inherited by the raylet and its workers
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray.get_runtime_context().gcs_address, crash_file
    finally:
        ray.shutdown()
        del os.environ["PIPELINE_CRASH_FILE"]


@pytest.fixture(scope="module")
def moto():
    """A moto S3 server on 127.0.0.1 for the module (tests/s3_server.py), with a `bucket`."""
    from s3_server import Moto
    server = Moto()
    server.fs().create_dir("bucket")
    yield server
    server.stop()
