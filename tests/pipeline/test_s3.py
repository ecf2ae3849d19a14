"""Object storage against a real S3-compatible server (issue 15 items 3 and 4): moto's server on
127.0.0.1 (a dev dependency), input Parquet and output on s3:// with the credentials in the URI.

- the CLI driver SIGKILLed mid-run, then a resume: the same ids and vectors as an uninterrupted
  local run, and no object the manifest does not name (parts of the killed run's in-flight
  shards are removed, never read);
- the secret of the URI appears in no object of the output, in nothing printed (the killed
  driver's and the resumed run's stdout/stderr, the pipeline's log records, the Ray session's
  log files) and in no exception text;
- requests are counted at the server for the killed run and the resume, by what they touch
  (docs/SCALE.md quotes them): beyond the parts' uploads and the reads of data (the input's
  rows, the finish step's id column), at most 3 per committed shard.
"""
from __future__ import annotations

import logging
from collections import Counter
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages
from pipeline.output.manifest import Manifest, read_manifest
from pipeline.output.output_folder import OutputFolder
from s3_server import SECRET  # the moto fixture is in conftest.py

ROOT = Path(__file__).resolve().parents[2]
N, SHARD_ROWS = 120, 20
RUN = {"id_column": "doc", "num_workers": 1, "shard_rows": SHARD_ROWS, "dtype": "float32"}
CLI = ["--id-column", "doc", "--num-workers", "1", "--shard-rows", str(SHARD_ROWS), "--dtype", "float32"]


@pytest.fixture(scope="module")
def corpus(moto, tmp_path_factory):
    """The same corpus locally and under s3://bucket/corpus/ (two files, small row groups)."""
    texts = sample_passages(N, seed=21, max_chars=200)
    table = pa.table({"doc": [f"d{i:04d}" for i in range(N)], "text": texts})
    local = tmp_path_factory.mktemp("corpus")
    fs = moto.fs()
    for k, start in enumerate(range(0, N, 70)):
        pq.write_table(table.slice(start, 70), local / f"c{k}.parquet", row_group_size=16)
        pq.write_table(table.slice(start, 70), f"bucket/corpus/c{k}.parquet", row_group_size=16, filesystem=fs)
    return str(local), moto.uri("bucket/corpus/")


@pytest.fixture(scope="module")
def reference(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    pipeline.run(corpus[0], output=str(out), progress=False, **RUN)
    return pipeline.read_embeddings(out)


@pytest.fixture(scope="module")
def killed_and_resumed(ray_local, moto, corpus, reference):
    """The CLI driver killed after its 2nd commit, then resumed in process: what each printed,
    the pipeline's log records, and the server's request counts of the resume."""
    out = moto.uri("bucket/out")
    pipeline.shutdown()  # this process's warm actors hold the cluster's CPUs that the CLI's actor needs
    env = {**os.environ, "PIPELINE_CRASH_AT": "mid_run:2",
           "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    moto.clear()
    killed = subprocess.run([sys.executable, "jobs/embed_corpus.py", "--input", corpus[1],
                             "--output", out, *CLI], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    killed_requests = list(moto.requests)
    left = moto.objects("bucket/out")
    manifest = read_manifest(out)
    records = logging.getLogger("pipeline")
    handler = _Capture()
    records.addHandler(handler)
    moto.clear()
    import io
    from contextlib import redirect_stderr, redirect_stdout
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            result = pipeline.run(corpus[1], output=out, progress=True, **RUN)
    finally:
        records.removeHandler(handler)
    return {"killed": killed, "left": left, "manifest": manifest, "result": result,
            "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "logs": handler.lines,
            "counts": dict(moto.counts), "requests": list(moto.requests),
            "killed_requests": killed_requests}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.mark.slow
def test_killed_driver_resumes_on_s3_to_the_local_runs_output(moto, killed_and_resumed, reference):
    run = killed_and_resumed
    committed = len(run["manifest"]["shards"])
    assert committed == 2 and not run["manifest"]["complete"]
    result = run["result"]
    assert result.stats.resumed_shards == committed and result.stats.rows_total == N
    got = pipeline.read_embeddings(result.output)
    assert got.column("id").to_pylist() == reference.column("id").to_pylist()
    np.testing.assert_allclose(pipeline.to_numpy(got), pipeline.to_numpy(reference), atol=1e-5, rtol=0)
    named = Manifest.load(OutputFolder.open(result.output)).files()
    assert set(moto.objects("bucket/out")) == named | {"_manifest.json"}  # strays removed


def requests_by_kind(requests: list[tuple[str, str]]) -> Counter:
    """What each request touched. Per shard: a part's upload, the commit log's batch objects
    (PUT), an errors file; data reads: the input, the parts' id column (the finish step's
    duplicate-id pass); per run: the manifest (`_manifest.json`, the log's segments, reading the
    log back on resume, a fold's clean-up), listings, folder markers."""
    out = Counter()
    for kind, path in requests:
        key = path.split("?")[0].split("/", 2)[2] if path.count("/") >= 2 else ""
        if kind == "GET list-type":
            what = "input" if "prefix=corpus" in path else "per run"
        elif key.startswith("corpus/"):
            what = "input"
        elif key.startswith("out/part-"):
            what = "part upload" if kind.startswith(("PUT", "POST")) else "part read"
        elif key.startswith("out/_errors/"):
            what = "errors file"
        elif key.startswith("out/_commits/log-") and kind == "PUT":
            what = "commit log"
        else:
            what = "per run"
        out[what] += 1
    return out


@pytest.mark.slow
def test_requests_per_committed_shard_beyond_uploads_and_data_reads(killed_and_resumed):
    """Per committed shard, besides its part's upload: one PUT of the commit log's batch
    object at most (and an errors file where it has bad rows): <= 3. What each run pays once
    (the manifest, listings, reading the log back) is bounded apart from the shards; the data
    reads (the input's rows, the id column of each part) are counted apart. Counts, not timings,
    for the killed run (2 shards committed) and the resume (4 more and the finish step)."""
    run = killed_and_resumed
    for name, requests, shards in (("killed run", run["killed_requests"], 2),
                                   ("resume", run["requests"], N // SHARD_ROWS - 2)):
        kinds = requests_by_kind(requests)
        print(f"\n{name}: {shards} shards committed; requests {dict(sorted(kinds.items()))}")
        assert kinds["part upload"] <= shards + 1  # one PUT per part (+ one killed in flight)
        assert kinds["commit log"] + kinds["errors file"] <= 3 * shards, kinds  # ~1 per shard
        assert kinds["per run"] <= 50, kinds  # per run, not per shard: no HEAD or GET per part


@pytest.mark.slow
def test_the_secret_is_never_written_printed_or_raised(ray_local, moto, corpus, killed_and_resumed, tmp_path):
    run = killed_and_resumed
    # Every object of the output, the killed driver's manifest included.
    for name, body in {**run["left"], **moto.objects("bucket/out")}.items():
        assert SECRET.encode() not in body, name
    assert "***@bucket" in run["manifest"]["input"][0]  # the input is recorded, redacted
    meta = pq.read_schema(pa.BufferReader(moto.objects("bucket/out")[next(iter(run["result"].manifest["shards"].values()))["path"]])).metadata
    assert SECRET.encode() not in b"".join(meta.values())
    # Everything printed: the killed CLI driver, the resumed run (summary on), log records.
    printed = [run["killed"].stdout, run["killed"].stderr, run["stdout"], run["stderr"], *run["logs"]]
    assert "***@bucket" in run["stdout"]  # the summary names the output, redacted
    assert not [p for p in printed if SECRET in p]
    # The Ray session's log files (actors, raylet, GCS).
    session = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p for p in session.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked
    # Exceptions: an input that is missing, an output that belongs to another run.
    with pytest.raises(pipeline.InputNotFoundError) as missing:
        pipeline.run(moto.uri("bucket/nothing-here/"), output=str(tmp_path / "o"), progress=False, **RUN)
    with pytest.raises(pipeline.FingerprintMismatch) as mismatch:
        # checked before any actor starts: the output records float32 vectors
        pipeline.run(corpus[1], output=run["result"].output, progress=False, output_dtype="float16", **RUN)
    for error in (missing.value, mismatch.value):
        text = "".join(traceback.format_exception(error))
        assert SECRET not in text and "***" in text, text
    # The CLI's error path prints the same redacted text (exit code 2).
    done = subprocess.run([sys.executable, "jobs/embed_corpus.py", "--input", moto.uri("bucket/nope/"),
                           "--output", str(tmp_path / "o2"), "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address})
    assert done.returncode == 2 and "***@bucket" in done.stderr and SECRET not in done.stdout + done.stderr
