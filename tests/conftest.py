"""Shared fixtures: one local Ray per test module that asks for it (FACTS.md: no dashboard, 2 CPUs)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for the whole module; shut down after its last test."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
