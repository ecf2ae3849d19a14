"""A worker Ray kills for memory is told as such, with Ray's figures and what to change (issue
24): the message builder on Ray's own report, and a real kill by Ray's memory monitor (its
threshold set to 1% of the node's memory, for a local Ray that only the test's CLI run uses)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.execution.memory_kill import describe, explain

ROOT = Path(__file__).resolve().parents[2]
# As Ray 2.5x words it (ray.exceptions.OutOfMemoryError, and the actor-death text that quotes it).
RAY_REPORT = (
    "1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: "
    "192.0.2.2, ID: d78716e9b47ddaa8a58fa0d2aaeb5e6a5321174f2e37bdc8cdf703c9) was 2.55GB used / "
    "23.54GB limit (0.108194)\nOOM kill reason: Memory usage 2724876288B exceeded threshold of "
    "1263809792B (5.0% of 25276194816B limit)\nObject store memory usage: [- objects spillable: 0")
KERNEL_KILL = ("The actor died unexpectedly before finishing this task. Worker exit detail: Worker "
               "unexpectedly exits with a connection error code 2. End of file. Some common causes "
               "include: (1) the process was killed by the OOM killer due to high memory usage")


def test_ray_memory_report_becomes_one_line_with_figures_and_the_fix():
    line = explain(RAY_REPORT)
    assert line.startswith("Ray killed the worker for memory: node 192.0.2.2 had 2.55 GB in use "
                           "of a 23.54 GB limit (Memory usage 2724876288B exceeded threshold")
    assert "--num-workers" in line and "--batch-tokens" in line and "\n" not in line
    from ray.exceptions import OutOfMemoryError
    assert describe(OutOfMemoryError(RAY_REPORT)) == line
    assert explain(KERNEL_KILL) is None  # Ray cannot tell the kernel's kill apart: left as is
    assert describe(RuntimeError("disk full\nmore")) == "RuntimeError: disk full"


@pytest.mark.slow
def test_a_run_whose_worker_ray_kills_for_memory_says_so(tmp_path):
    """Issue 24: "the node left the cluster, or no node has room" after minutes, memory never
    mentioned; before that, a Ray OutOfMemoryError at start-up escaped as a traceback."""
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three"]}), corpus)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_memory_usage_threshold="0.01", RAY_memory_monitor_refresh_ms="100")
    done = subprocess.run([sys.executable, "jobs/embed_corpus.py", "--input", str(corpus), "--output",
                           str(tmp_path / "out"), "--no-progress", "--address", "local",
                           "--num-workers", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    error = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert "Ray killed the worker for memory: node " in error and " GB in use of a " in error
    assert "--num-workers" in error and "--batch-tokens" in error
