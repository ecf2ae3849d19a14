"""Elastic workers (issue 15 item 2) on a real multi-node Ray (tests/ray_nodes.py): a 0-CPU head
and one 1-CPU worker node; with num_workers="auto" a node added mid-run gets a worker (pinned to
it) that commits shards, and the output is every row once with the engine's vectors.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages
from ray_nodes import multinode
from pipeline.output.manifest import read_manifest

N, SHARD_ROWS = 960, 8  # long enough (≈ a minute here) for a joining worker to load its engine
RUN = {"threads_per_worker": 1, "shard_rows": SHARD_ROWS, "dtype": "float32", "progress": False}


@pytest.fixture(scope="module")
def nodes():
    with multinode([1]) as started:
        yield started


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = sample_passages(N, seed=2, max_chars=200)
    path = tmp_path_factory.mktemp("corpus") / "c.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=40)
    return str(path), texts


@pytest.fixture(scope="module")
def reference(corpus):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(dtype="float32", num_threads=2)).embed(corpus[1])


def committed(out: Path) -> dict:
    try:
        return read_manifest(out)["shards"]
    except (OSError, ValueError, KeyError):
        return {}  # not written yet, or being replaced


def run_adding_a_node(cluster, out: Path, shards: int, **kwargs):
    """pipeline.run in a thread; this (main) thread adds a 1-CPU node once `shards` shards are
    committed (Cluster.add_node must run on the main thread: it installs signal handlers)."""
    box = {}

    def target():
        try:
            box["result"] = pipeline.run(output=str(out), **kwargs)
        except BaseException as e:  # re-raised below, in the test's thread
            box["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline and len(committed(out)) < shards:
        time.sleep(0.1)
    cluster.add_node(num_cpus=1)
    thread.join(timeout=600)
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.slow
def test_a_node_that_joins_mid_run_gets_a_worker_that_takes_shards(nodes, corpus, reference, tmp_path):
    cluster, _ = nodes
    out = tmp_path / "out"
    result = run_adding_a_node(cluster, out, 1, data=corpus[0], num_workers="auto", **RUN)
    stats = result.stats
    assert len(stats.workers) == 2, stats.workers  # one at start, one on the node that joined
    by_worker = [r["worker"] for r in committed(out).values()]
    assert by_worker.count(1) >= 1 and by_worker.count(1) == stats.workers[1].shards, stats.workers
    assert stats.lost_workers == ()
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == list(range(N))  # every row once, in order
    np.testing.assert_allclose(pipeline.to_numpy(table), reference, atol=2e-5, rtol=0)
    print(f"\nelastic run: workers {stats.workers}")
