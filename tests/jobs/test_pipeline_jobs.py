"""`jobs/embed_corpus.py` as a user runs it: exit codes, a driver SIGKILLed mid-run then resumed,
and `ray job submit` against a real local head bound to 127.0.0.1.

Each subprocess starts its own Ray (or uses the test's head), so this module has no Ray fixture.
Vectors are checked against `Engine.embed` on the same texts in this process (float32).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages
from pipeline.output.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "jobs/embed_corpus.py"
N = 240  # 12 shards of 20: the driver is caught after 2 commits with 10 still to run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A Parquet corpus with string ids, and the reference vectors of its texts."""
    from workers import Engine, EngineConfig
    texts = sample_passages(N, seed=5, max_chars=300)
    ids = [f"d{i:04d}" for i in range(N)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(pa.table({"doc": ids, "text": texts}), path, row_group_size=64)
    vectors = Engine(EngineConfig(dtype="float32", num_threads=2)).embed(texts)
    return path, ids, vectors


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, **kwargs)


def assert_output(out, ids, vectors):
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == ids
    np.testing.assert_allclose(pipeline.to_numpy(table), vectors, atol=2e-5, rtol=0)
    named = {r["path"] for r in read_manifest(Path(out))["shards"].values()}
    assert {p.name for p in Path(out).iterdir() if p.name not in ("_manifest.json", "_commits")} == named


def test_help_and_usage_errors(tmp_path):
    helped = cli("--help")
    assert helped.returncode == 0 and "ray job submit" in helped.stdout and "--batch-tokens" in helped.stdout
    assert cli().returncode == 2  # neither --input/--output nor --demo
    missing = cli("--input", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "out"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    zero = cli("--demo", "--num-workers", "0")
    assert zero.returncode == 2 and "'0': give a positive integer or 'auto'" in zero.stderr


@pytest.mark.parametrize("script, defaults", [
    ("embed_corpus.py", ["--dtype DTYPE", "(default: auto)", "--output-format", "(default: parquet)",
                         "--batch-tokens", "(default: 4096 on CPU"]),
    ("build_index.py", ["--kind", "(default: flat)"]),
    ("rerank.py", ["--dtype", "(default: auto)"]),
    ("search.py", ["--weights", "(default: 0.4,0.2,0.4"]),
])
def test_every_cli_help_states_defaults_and_an_example(script, defaults):
    """Issue 24: --dtype, --batch-tokens, --output-format stated no default; search.py had no example."""
    helped = subprocess.run([sys.executable, f"jobs/{script}", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    text = " ".join(helped.stdout.split())  # argparse wraps lines
    assert helped.returncode == 0 and "examples: " in text and f" python jobs/{script} --" in text
    for needle in defaults:
        assert needle in text, needle
    assert "(default: None)" not in text and "(default: False)" not in text


def test_pipeline_errors_are_put_in_the_cli_flags():
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        from embed_corpus import FLAG_ALIASES, build_parser
        from cli_help import in_flags
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    parser = build_parser()
    cases = {
        "(set text_column= / id_column= to one of them)": "(set --text-column / --id-column to one of them)",
        "point text_column= (--text-column) at the text, or pass cast_text=True (--cast) to convert":
            "point --text-column at the text, or pass --cast to convert",
        "or pass on_bad_row='record' (--on-bad-row record) to list": "or pass --on-bad-row record to list",
        "max_length=1000 is over 512; lower max_num_batched_tokens=": "--max-length 1000 is over 512; "
                                                                       "lower --batch-tokens",
        "run fewer workers (num_workers= / --num-workers)": "run fewer workers (--num-workers)",
        "max_retries=-1 must be an integer >= 0": "--max-retries -1 must be an integer >= 0",
    }
    for python, cli_words in cases.items():
        assert in_flags(python, parser, FLAG_ALIASES) == cli_words


def test_num_workers_option_is_a_count_or_auto():
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        from embed_corpus import parse_args
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    demo = ["--demo"]
    assert parse_args(demo).num_workers is None  # auto: pipeline.run follows the cluster
    assert parse_args([*demo, "--num-workers", "auto"]).num_workers is None
    assert parse_args([*demo, "--num-workers", "3"]).num_workers == 3


@pytest.mark.slow
def test_driver_sigkilled_mid_run_then_resumed(corpus, tmp_path):
    path, ids, vectors = corpus
    out = tmp_path / "out"
    args = ["--input", str(path), "--output", str(out), "--id-column", "doc", "--num-workers", "2",
            "--shard-rows", "20", "--dtype", "float32", "--no-progress"]
    driver = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest, deadline = out / "_manifest.json", time.monotonic() + 180
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if manifest.exists() and len(read_manifest(out)["shards"]) >= 2:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the run ended before it could be interrupted"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        _kill_group(driver.pid)  # the local Ray that driver started, now orphaned
    committed = read_manifest(out)
    assert not committed["complete"] and 2 <= len(committed["shards"]) < N // 20
    with pytest.raises(ValueError, match="has not finished"):
        pipeline.read_embeddings(out)
    partial = pipeline.read_embeddings(out, allow_partial=True)
    assert partial.num_rows == 20 * len(committed["shards"])

    # The resume starts its own local Ray, as `make demo` does: no token-auth warning (issue 24).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    resumed = cli(*args, "--summary-json", str(tmp_path / "stats.json"), env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Token authentication" not in resumed.stderr and "RAY_AUTH_MODE" not in resumed.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["resumed_shards"] == len(committed["shards"])
    assert stats["rows"] == N - 20 * len(committed["shards"]) and stats["rows_total"] == N
    assert_output(out, ids, vectors)

    # Exit code 3: the same output with a different max length (another vector space) is refused.
    refused = cli(*args, "--max-length", "64")
    assert refused.returncode == 3 and "max_length: 256 in the output, 64 in this run" in refused.stderr


@pytest.mark.slow
def test_ray_job_submit_on_local_head(corpus, tmp_path):
    path, ids, vectors = corpus
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Every port of its own: another Ray on this machine (a parallel test worker) holds the
    # defaults, and a head whose job agent cannot bind its port never takes a job.
    gcs, dash, client, agent, agent_grpc, metrics = _free_ports(6)
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}",
         "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert head.wait(timeout=120) == 0, head.stdout.read()[-2000:]
        out = tmp_path / "out"
        # Right after `ray start` the head's job agent may not have registered yet ("No available
        # agent to submit job"): no job was created then, so submitting again is safe.
        deadline = time.monotonic() + 300  # a loaded 2-core machine took over 120 s once
        while True:
            job = subprocess.run(
                [ray_bin, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir",
                 str(ROOT), "--", "python", SCRIPT, "--input", str(path), "--output", str(out),
                 "--id-column", "doc", "--dtype", "float32", "--no-progress"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
            if (job.returncode == 0 or "No available agent" not in job.stdout + job.stderr
                    or time.monotonic() > deadline):
                break
            time.sleep(3)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout
        assert_output(out, ids, vectors)
    finally:
        _kill_group(head.pid)  # only this head's processes; `ray stop` would kill every Ray here


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_group(pgid: int) -> None:
    """SIGTERM then SIGKILL every process left in the session this test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False
