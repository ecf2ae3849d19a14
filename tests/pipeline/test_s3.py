"""Object storage against a real S3-compatible server (issue 15 items 3 and 4): moto's server on
127.0.0.1 (a dev dependency), input Parquet and output on s3:// with the credentials in the URI.

- the CLI driver SIGKILLed mid-run, then a resume: the same ids and vectors as an uninterrupted
  local run, and no object the manifest does not name (parts of the killed run's in-flight
  shards are removed, never read);
- the secret of the URI appears in no object of the output, in nothing printed (the killed
  driver's and the resumed run's stdout/stderr, the pipeline's log records, the Ray session's
  log files) and in no exception text;
- requests are counted at the server for the killed run and the resume, by what they touch
  (docs/SCALE.md quotes them): per committed shard, besides its part's upload, at most 1 for
  the bookkeeping, 1 GET per piece of an input file it reads (no HEAD, no footer: an actor reads
  a file's footer once), 2 GETs for its part's ids in the finish step (no HEAD);
- the same reads without Ray: a shard's rows and a part's ids, counted request by request.
"""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import os
import pickle
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
from pipeline.config import PipelineConfig
from pipeline.inputs.samples import sample_passages
from pipeline.inputs.shards import ShardPlan, read_shard
from pipeline.inputs.sources import open_source
from pipeline.output.finish import _input_row_ids
from pipeline.output.manifest import Manifest, read_manifest
from pipeline.output.output_folder import OutputFolder
from pipeline.output.writer import part_table
from s3_server import SECRET  # the moto fixture is in conftest.py

ROOT = Path(__file__).resolve().parents[2]
N, SHARD_ROWS = 120, 20
RUN = {"id_column": "doc", "num_workers": 1, "shard_rows": SHARD_ROWS, "dtype": "float32",
       "threads_per_worker": 1}  # 1-CPU actors, as most modules: a warm pool carries over
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


def requests_by_kind(requests: list[tuple[str, str, str]], sizes: dict[str, int]) -> Counter:
    """What each request touched. Per shard: a part's upload, the commit log's batch objects
    (PUT), an errors file; data reads: the input's rows (a GET of row groups), the input files'
    footers (a GET that ends at the file's end: `sizes`, by key), any other request for an input
    file (a HEAD), the parts' id column (the finish step's duplicate-id pass); per run: the
    manifest (`_manifest.json`, the log's segments, reading the log back on resume, a fold's
    clean-up), listings (the input's too), folder markers."""
    out = Counter()
    for kind, path, ranged in requests:
        key = path.split("?")[0].split("/", 2)[2] if path.count("/") >= 2 else ""
        if kind == "GET list-type":
            what = "per run"
        elif key.startswith("corpus/"):
            what = "input other" if kind != "GET" else \
                "input footer" if ranged.endswith(f"-{sizes[key] - 1}") else "input rows"
        elif key.startswith("out/part-"):
            what = "part upload" if kind.startswith(("PUT", "POST")) else f"part read {kind}"
        elif key.startswith("out/_errors/"):
            what = "errors file"
        elif key.startswith("out/_commits/log-") and kind == "PUT":
            what = "commit log"
        else:
            what = "per run"
        out[what] += 1
    return out


def _pieces(shards) -> int:
    plan = ShardPlan(np.array([0, 70, N]), SHARD_ROWS)  # the corpus: files of 70 and 50 rows
    return sum(len(plan[k].pieces) for k in shards)


@pytest.mark.slow
def test_requests_per_committed_shard_beyond_uploads_and_data_reads(moto, killed_and_resumed):
    """Per committed shard, besides its part's upload: one PUT of the commit log's batch object
    at most (the corpus has no bad rows: no errors file); one GET per piece of an input file
    (its row groups; no HEAD, and the footer read once per file by the planner and once by the
    actor); in the finish step, no read of a part the same driver committed (its actor handed
    the ids over), two GETs for the id column of a part an earlier driver committed (the
    footer, the column's chunk; no HEAD): ≤ 3 in all. What each run pays once (the manifest, listings, reading the log back) is
    bounded apart from the shards. Counts, not timings, for the killed run (2 shards committed,
    the next ones in flight) and the resume (4 more and the finish step)."""
    run, files, total = killed_and_resumed, 2, Counter()
    sizes = {k: len(v) for k, v in moto.objects("bucket").items() if k.startswith("corpus/")}
    for name, requests, shards, read in (("killed run", run["killed_requests"], 2, range(4)),
                                         ("resume", run["requests"], N // SHARD_ROWS - 2, range(2, 6))):
        kinds = requests_by_kind(requests, sizes)
        total.update(kinds)
        print(f"\n{name}: {shards} shards committed; requests {dict(sorted(kinds.items()))}")
        assert kinds["part upload"] <= shards + 1  # one PUT per part (+ one killed in flight)
        assert kinds["commit log"] <= shards and kinds["errors file"] == 0, kinds  # <= 1 per shard
        assert kinds["input rows"] <= _pieces(read), kinds  # one GET per piece read (in flight too)
        assert kinds["input footer"] <= 2 * files, kinds  # per file: the planner's, the actor's
        assert kinds["input other"] == 0, kinds  # no HEAD of an input file
        assert kinds["per run"] <= 50, kinds  # per run, not per shard: no HEAD or GET per part
    # The finish step reads back only the parts of the 2 shards the killed driver committed (2
    # GETs each: footer, id chunk); the 4 the resume committed hand their ids over (id_spool.py).
    assert kinds["part read GET"] == 2 * 2 and kinds["part read HEAD"] == 0, kinds
    per_shard = {k: total[k] / (N // SHARD_ROWS) for k in ("commit log", "input rows", "part read GET")}
    print(f"both runs, per committed shard beyond its upload: {per_shard} (footers, per run apart)")
    assert sum(per_shard.values()) <= 3, per_shard


def test_a_shard_costs_one_get_per_piece_and_a_file_its_footer_once(moto, corpus):
    """Without Ray: the planner reads each input file's footer with one GET (the size from the
    listing: no HEAD); the source as shipped to an actor opens a file with that size and reads
    its footer once, however many shards read it, two calls at once included; a shard's piece of
    a file is one GET of its row groups (pyarrow coalesces them); the rows are the file's."""
    moto.clear()
    source = open_source(corpus[1], PipelineConfig(id_column="doc"))
    planned = [(k, p) for k, p, _ in moto.requests if k != "GET list-type"]
    assert sorted(planned) == sorted([("HEAD", "/bucket/corpus")] + [("GET", f"/{p}") for p in source.paths])
    shipped, sizes = pickle.loads(pickle.dumps(source)), dict(zip(source.paths, source.sizes))
    assert len(shipped._footers) == 0  # no footer travels with the source
    plan = ShardPlan(source.fragments, SHARD_ROWS)
    reference = pa.concat_tables([pq.read_table(f"{corpus[0]}/c{k}.parquet") for k in range(2)])
    moto.clear()
    with ThreadPoolExecutor(2) as pool:  # an actor's two calls at once
        tables = list(pool.map(lambda shard: read_shard(shipped, shard, ["doc", "text"]), plan))
    for shard, table in zip(plan, tables):
        assert table.equals(reference.slice(shard.row_offset, shard.num_rows)), shard.describe()
    assert {k for k, _, _ in moto.requests} == {"GET"}  # no HEAD, no listing
    footers = [p for _, p, r in moto.requests if r.endswith(f"-{sizes[p[1:]] - 1}")]
    assert sorted(footers) == sorted(f"/{p}" for p in source.paths)  # once per file
    assert len(moto.requests) - len(footers) == sum(len(s.pieces) for s in plan) == 7


def test_the_id_pass_reads_a_part_with_two_gets_and_no_head(moto):
    """The finish step's id pass opens a part with its record's size: its footer and its id
    column's chunk, 2 GETs (a part of 300 KB: the footer's read does not reach the ids)."""
    folder = OutputFolder.open(moto.uri("bucket/ids"))
    ids = pa.array([f"x{i:05d}" for i in range(200)])
    vectors = np.random.default_rng(0).random((200, 384), dtype=np.float32)
    record = folder.publish_part("000000", part_table(ids, vectors, None, "float32", {"run": 1}), "parquet")
    assert record["bytes"] > 256 * 1024
    moto.clear()
    assert _input_row_ids(folder, record, None).equals(ids)
    assert [k for k, _, _ in moto.requests] == ["GET", "GET"]
    moto.clear()
    (table,) = folder.read_parts([record], ["id", "embedding"])  # read_embeddings' reads likewise
    assert table.column("id").combine_chunks().equals(ids)
    np.testing.assert_array_equal(pipeline.to_numpy(table), vectors)
    assert [k for k, _, _ in moto.requests] == ["GET", "GET"]


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
