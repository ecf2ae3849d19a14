"""Node loss on a real multi-node Ray (issue 15 item 1): `ray.cluster_utils.Cluster` runs a head
with no CPUs and worker nodes with one CPU each (real raylets on this machine); a node is removed
mid-run, so its worker's restart can never be placed.

- one of two nodes lost: the worker is given up after `restart_timeout_s`, its shards go to the
  survivor, the run finishes naming the lost worker; every row once, vectors equal to the engine's.
- the last node lost: the run fails with WorkersLostError (CLI exit code 1); once a node joins,
  a rerun resumes from the committed shards to the same vectors.

The module's cluster is `ray_nodes.multinode` (private RAY_TMPDIR, removed afterwards).
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
from pipeline.errors import ExitCode, exit_code
from pipeline.inputs.samples import sample_passages
from ray_nodes import multinode
from pipeline.output.manifest import read_manifest

N, SHARD_ROWS = 240, 12
RUN = {"threads_per_worker": 1, "shard_rows": SHARD_ROWS, "dtype": "float32", "progress": False,
       "restart_timeout_s": 5.0}


@pytest.fixture(scope="module")
def nodes():
    """(cluster, [worker node, worker node]): a 0-CPU head and two 1-CPU worker nodes."""
    with multinode([1, 1]) as cluster_and_nodes:
        yield cluster_and_nodes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = sample_passages(N, seed=15, max_chars=200)
    folder = tmp_path_factory.mktemp("corpus")
    pq.write_table(pa.table({"text": texts}), folder / "all.parquet", row_group_size=24)
    pq.write_table(pa.table({"text": texts[: N // 2]}), folder / "half.parquet", row_group_size=24)
    return folder, texts


@pytest.fixture(scope="module")
def reference(corpus):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(dtype="float32", num_threads=2)).embed(corpus[1])


def remove_when_committed(cluster, node, out: Path, shards: int) -> threading.Thread:
    """Remove `node` from the cluster once the run writing `out` has committed `shards` shards."""
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if len(read_manifest(out)["shards"]) >= shards:
                    break
            except (OSError, ValueError, KeyError):
                pass  # not written yet, or being replaced
            time.sleep(0.1)
        cluster.remove_node(node)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def check_output(out: Path, want: np.ndarray) -> None:
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == list(range(len(want)))  # every row once, in order
    np.testing.assert_allclose(pipeline.to_numpy(table), want, atol=2e-5, rtol=0)
    manifest = read_manifest(out)
    assert {p.name for p in out.glob("part-*")} == {r["path"] for r in manifest["shards"].values()}


@pytest.mark.slow
def test_node_lost_mid_run_survivor_finishes_and_the_lost_worker_is_named(nodes, corpus, reference, tmp_path):
    cluster, workers = nodes
    out = tmp_path / "out"
    watcher = remove_when_committed(cluster, workers[1], out, shards=3)
    t0 = time.monotonic()
    result = pipeline.run(str(corpus[0] / "all.parquet"), output=str(out), num_workers=2, **RUN)
    watcher.join(timeout=60)
    assert not watcher.is_alive()
    stats = result.stats
    assert len(stats.lost_workers) == 1, stats.workers
    lost = stats.workers[stats.lost_workers[0]]
    # Given up after the restart timeout while shards waited, or (on a fast machine, when the
    # survivor finished first) named lost at the end without waiting: both are the design.
    assert "lost" in lost.lost
    assert "restart_timeout_s=5" in lost.lost or "before the last shard was done" in lost.lost, lost.lost
    assert stats.rows == N and (stats.retries >= 1 or "before the last shard was done" in lost.lost)
    assert result.manifest["summary"]["lost_workers"] == list(stats.lost_workers)
    check_output(out, reference)
    print(f"node loss run: {time.monotonic() - t0:.1f} s; workers {stats.workers}")


@pytest.mark.slow
def test_last_node_lost_fails_then_a_rerun_resumes_on_a_new_node(nodes, corpus, reference, tmp_path):
    cluster, workers = nodes  # the previous test left one worker node (workers[0])
    out = tmp_path / "out"
    half = str(corpus[0] / "half.parquet")
    watcher = remove_when_committed(cluster, workers[0], out, shards=2)
    t0 = time.monotonic()
    with pytest.raises(pipeline.WorkersLostError, match="no engine actor is left") as e:
        pipeline.run(half, output=str(out), num_workers=1, **RUN)
    assert exit_code(e.value) == ExitCode.FAILED and "restart_timeout_s=5" in str(e.value)
    watcher.join(timeout=60)
    failed_after = time.monotonic() - t0
    committed = len(read_manifest(out)["shards"])
    assert 2 <= committed < N // 2 // SHARD_ROWS
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    result = pipeline.run(half, output=str(out), num_workers=1, **RUN)
    assert result.stats.resumed_shards == committed and result.stats.lost_workers == ()
    check_output(out, reference[: N // 2])
    print(f"last node lost: failed after {failed_after:.1f} s with {committed} shards committed")
