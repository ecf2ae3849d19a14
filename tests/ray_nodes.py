"""A real multi-node Ray on this machine for one test module: `ray.cluster_utils.Cluster` with a
0-CPU head (where the driver runs) and worker nodes (real raylets).

It lives under a private RAY_TMPDIR, so its cluster file never points other tests (or other
users of this machine) at it; `env` is set before the raylets start, so their workers inherit it.
Everything is restored and removed afterwards.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager


@contextmanager
def multinode(worker_cpus: list[int], env: dict[str, str] | None = None):
    """Yield (cluster, [worker nodes]) with the driver connected to it."""
    import ray
    from ray.cluster_utils import Cluster
    if ray.is_initialized():
        ray.shutdown()
    env = dict(env or {})
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS", *env)}
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(env)
    os.environ["RAY_TMPDIR"] = ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: sockets
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = [cluster.add_node(num_cpus=n) for n in worker_cpus]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()  # also removes its cluster file
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(ray_tmp, ignore_errors=True)
