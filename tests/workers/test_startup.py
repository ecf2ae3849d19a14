"""Start-up against a Ray address that answers nothing (issue 15 item 6): a RAY_ADDRESS pointing
at a dead port, and a cluster file left by a dead cluster, each fail the CLI (a real process)
within 30 s with exit code 2 and a message naming the address and the fix, instead of Ray's
endless retries; `pipeline.run(address=...)` does the same in process.

The stale cluster file is written under a private RAY_TMPDIR, so the machine's own
/tmp/ray/ray_current_cluster (and other tests' local Ray) are never touched.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.execution import cluster

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 30


@pytest.fixture
def dead_address():
    """host:port where nothing listens (a port bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one", "two"]}), path)
    return path


def run_cli(corpus: Path, out: Path, env: dict, *args) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "jobs/embed_corpus.py", "--input", str(corpus),
                           "--output", str(out), "--no-progress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - t0


def test_ray_address_pointing_at_nothing_fails_fast_naming_it(corpus, tmp_path, dead_address):
    env = {**os.environ, "RAY_ADDRESS": dead_address}
    done, seconds = run_cli(corpus, tmp_path / "out", env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert seconds < LIMIT_S
    assert dead_address in done.stderr and "RAY_ADDRESS" in done.stderr
    assert "unset RAY_ADDRESS" in done.stderr and "--address local" in done.stderr
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_stale_cluster_file_fails_fast_naming_the_file(corpus, tmp_path, dead_address):
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        stale = Path(ray_tmp) / "ray" / "ray_current_cluster"
        stale.parent.mkdir()
        stale.write_text(dead_address)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = ray_tmp
        done, seconds = run_cli(corpus, tmp_path / "out", env)
        assert done.returncode == 2, done.stderr[-2000:]
        assert seconds < LIMIT_S
        assert dead_address in done.stderr and str(stale) in done.stderr
        assert "remove the stale file" in done.stderr and "--address local" in done.stderr  # CLI words
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)


def test_run_with_an_address_argument_fails_fast(corpus, tmp_path, dead_address, monkeypatch):
    import ray
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.monotonic()
    with pytest.raises(pipeline.ClusterUnreachableError, match=dead_address.replace(".", r"\.")) as e:
        pipeline.run(str(corpus), output=str(tmp_path / "out"), address=dead_address, progress=False)
    assert time.monotonic() - t0 < LIMIT_S
    assert isinstance(e.value, ValueError) and not ray.is_initialized()


def test_address_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve(None) == ("local", "default")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.9:6379\n")
    assert cluster.resolve(None)[0] == "10.0.0.9:6379"
    assert cluster.resolve("local")[0] == "local"  # the documented fix: start a new local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.8:6379")
    assert cluster.resolve(None) == ("10.0.0.8:6379", "the RAY_ADDRESS environment variable")
    assert cluster.resolve("10.0.0.7:6379")[0] == "10.0.0.7:6379"
    with pytest.raises(pipeline.ClusterUnreachableError, match="not host:port"):
        cluster.check_reachable("nonsense", "address=")


@pytest.fixture
def http_address():
    """host:port of a tiny HTTP server on 127.0.0.1 (something that answers, but not Ray)."""
    import http.server
    import threading
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_address_where_an_http_server_listens_fails_fast_naming_what_answered(
        corpus, tmp_path, http_address, monkeypatch):
    """Issue 24: Ray retried "Timed out while waiting for GCS" for over 10 minutes."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.monotonic()
    with pytest.raises(pipeline.ClusterUnreachableError) as e:
        pipeline.run(str(corpus), output=str(tmp_path / "out"), address=http_address, progress=False)
    assert time.monotonic() - t0 < LIMIT_S  # a hang guard; the probe answers in milliseconds
    message = str(e.value)
    assert f"something answers at {http_address} (from address=), but not a Ray cluster" in message
    assert "it replied '" in message and "(an HTTP server)" in message
    assert not ray.is_initialized() and not (tmp_path / "out" / "_manifest.json").exists()


def test_cli_address_where_an_http_server_listens_exits_2(corpus, tmp_path, http_address):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done, seconds = run_cli(corpus, tmp_path / "out", env, "--address", http_address)
    assert done.returncode == 2 and seconds < LIMIT_S, done.stderr[-2000:]
    assert http_address in done.stderr and "not a Ray cluster" in done.stderr
