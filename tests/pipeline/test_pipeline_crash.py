"""Crash matrix: the driver SIGKILLed at planning, mid-run and between a part's publish and its
commit, and an actor SIGKILLed mid-shard and after writing its part; each resumed run must give
exactly the uninterrupted run's output (same ids in the same order, same vectors, same
`_errors.parquet`, and no file the manifest does not name).

One local Ray for the module; killed drivers run `jobs/embed_corpus.py` in a subprocess that
joins it (RAY_ADDRESS), so no test starts a second cluster. Every engine actor takes one of its
two CPUs, so the actor this process keeps warm (KEEP_WARM: the reference run's, reused by the
resumes, as a notebook's second call would) leaves a CPU to a CLI driver's actor. Kill points are the test-only hooks
`PIPELINE_CRASH_AT` (driver, `pipeline/execution/driver.py`) and `PIPELINE_CRASH_FILE` (actors,
`pipeline/execution/actor.py`): real SIGKILLs at exact points, so no test depends on timing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages
from pipeline.output.commit_log import FOLD_ENV
from pipeline.output.manifest import Manifest, read_manifest
from pipeline.output.output_folder import OutputFolder

ROOT = Path(__file__).resolve().parents[2]
N, SHARD_ROWS = 200, 20
BAD = {7: None, 33: "", 61: "  \t\n", 150: "\u3000"}  # row -> bad text
DUPLICATE = {90: "d0010", 151: "d0010", 199: "d0005"}  # row -> id already used by another row
RUN = {"id_column": "doc", "num_workers": 1, "threads_per_worker": 1, "shard_rows": SHARD_ROWS,
       "dtype": "float32", "progress": False}
CLI_ARGS = ["--id-column", "doc", "--num-workers", "1", "--threads-per-worker", "1",
            "--shard-rows", str(SHARD_ROWS), "--dtype", "float32", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A Parquet corpus (several files, small row groups) with bad texts and repeated ids."""
    texts = sample_passages(N, seed=11, max_chars=200)
    ids = [f"d{i:04d}" for i in range(N)]
    for row, text in BAD.items():
        texts[row] = text
    for row, doc in DUPLICATE.items():
        ids[row] = doc
    folder = tmp_path_factory.mktemp("corpus")
    table = pa.table({"doc": ids, "text": texts})
    for k, start in enumerate(range(0, N, 70)):
        pq.write_table(table.slice(start, 70), folder / f"c{k}.parquet", row_group_size=16)
    return str(folder), ids, texts


@pytest.fixture(scope="module")
def reference(cluster, corpus, tmp_path_factory):
    """The uninterrupted run: its table and `_errors.parquet`, checked against the input."""
    path, ids, texts = corpus
    out = tmp_path_factory.mktemp("reference")
    result = pipeline.run(path, output=str(out), **RUN)
    table, errors = pipeline.read_embeddings(out), pq.read_table(out / "_errors.parquet")
    good = [i for i in range(N) if i not in BAD]
    assert table.column("id").to_pylist() == [ids[i] for i in good]
    assert sorted(errors.column("row").to_pylist()) == sorted(
        [*BAD, 90, 151, 10, 199, 5])  # bad texts, and every occurrence of a repeated id
    assert (result.stats.bad_rows_total, result.stats.duplicate_ids) == (len(BAD), 5)
    return table, errors


def assert_same_as_reference(out: Path, reference) -> None:
    table, errors = reference
    got = pipeline.read_embeddings(out)
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    np.testing.assert_allclose(pipeline.to_numpy(got), pipeline.to_numpy(table), atol=1e-5, rtol=0)
    assert pq.read_table(out / "_errors.parquet").equals(errors)
    manifest = Manifest.load(OutputFolder.open(out))
    assert manifest.data["complete"]
    named = manifest.files()  # parts, error files, the commit log's files
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == named | {"_manifest.json", "_errors.parquet"}  # nothing half-written left


def kill_driver_at(point: str, corpus, cluster, out: Path, tmp: Path | None = None) -> dict:
    """Run the CLI driver with PIPELINE_CRASH_AT=point (and TMPDIR=tmp); it must die by SIGKILL there.
    Its actor takes the CPU this process's warm actor leaves."""
    env = {**os.environ, "PIPELINE_CRASH_AT": point, "RAY_ADDRESS": cluster[0],
           FOLD_ENV: "3"}  # the commit log folds every 3 commits: 3 folds in a 10-shard run
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    done = subprocess.run([sys.executable, "jobs/embed_corpus.py", "--input", corpus[0],
                           "--output", str(out), *CLI_ARGS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return read_manifest(out)


def committed_parts(out: Path) -> dict:
    """shard id -> (record, (inode, mtime) of its part) for every committed shard."""
    return {k: (r, (os.stat(out / r["path"]).st_ino, os.stat(out / r["path"]).st_mtime_ns))
            for k, r in read_manifest(out)["shards"].items()}


# Kill points: at planning; a shard committed (mid_run); a part published, not committed; a
# fold of the commit log with its new segment written, not named (fold_written) and with
# `_manifest.json` switched, the old log not yet deleted (fold_switched).
@pytest.mark.slow
@pytest.mark.parametrize("point, committed", [("plan", 0), ("mid_run:2", 2), ("after_publish:3", 2),
                                              ("fold_written:1", 3), ("fold_switched:2", 6)])
def test_driver_killed_then_resumed(cluster, corpus, reference, tmp_path, point, committed, monkeypatch):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    manifest = kill_driver_at(point, corpus, cluster, out, tmp)
    spools = lambda: list(tmp.glob("pipeline-id-spool-*"))  # noqa: E731
    assert len(spools()) == (committed > 0)  # the killed driver's ids of its commits (id_spool.py)
    assert not manifest["complete"] and not (out / "_errors.parquet").exists()
    assert len(manifest["shards"]) == committed  # every commit the driver made is in the log
    if point == "after_publish:3":  # the third part is on disk, published, uncommitted
        parts = {p.name for p in out.glob("part-*")}
        assert len(parts - {r["path"] for r in manifest["shards"].values()}) >= 1
    before = committed_parts(out)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    resumed = pipeline.run(corpus[0], output=str(out), **RUN)
    assert not spools()  # the dead driver's spool removed, the resume's own closed
    assert resumed.stats.resumed_shards == committed and resumed.stats.shards == N // SHARD_ROWS - committed
    assert resumed.stats.rows_total == N - len(BAD)
    after = committed_parts(out)
    assert {k: after[k] for k in before} == before  # no committed part redone or rewritten
    assert_same_as_reference(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("point,workers", [("mid_shard", 1), ("after_write", 1), ("mid_shard", 2)])
def test_actor_killed_then_replaced(cluster, corpus, reference, tmp_path, point, workers):
    """An actor SIGKILLed mid-shard (or after writing its part, before the commit) is restarted,
    its shard retried, nothing lost or repeated; with two workers the other keeps working."""
    cluster[1].write_text(f"000004 {point}")  # the actor SIGKILLs itself on shard 4, once
    out = tmp_path / "out"
    result = pipeline.run(corpus[0], output=str(out), **{**RUN, "num_workers": workers})
    assert not cluster[1].exists(), "the crash point was never reached"
    assert result.stats.retries >= 1
    assert sorted(w.restarts for w in result.stats.workers) == [0] * (workers - 1) + [1]
    assert_same_as_reference(out, reference)


_RUN_IN_SCRIPT = """
import sys
import pipeline
pipeline.run(sys.argv[1], output=sys.argv[2], num_workers=1, shard_rows=10, dtype="float32",
             progress=False)
"""


def _interrupt_after_first_commit(command: list[str], out: Path, cluster,
                                  sig=signal.SIGINT) -> subprocess.CompletedProcess:
    """Start `command` (a driver joining the module's Ray), send `sig` to its process group (as
    a terminal's Ctrl-C does) once a shard is committed, and wait for it."""
    pipeline.shutdown()  # this process's warm actors hold the CPUs the driver's actor needs
    env = {**os.environ, "RAY_ADDRESS": cluster[0]}
    # With SIGINT at its default, as a terminal starts a driver: a pytest worker can have it
    # ignored (an earlier test's library set SIG_IGN), and a child inherits that; then Python
    # installs no KeyboardInterrupt handler and the run went on past the signal (seen in CI).
    driver = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    manifest = out / "_manifest.json"
    try:
        while driver.poll() is None:  # the CLI's own timeout guards the wait
            if manifest.exists() and read_manifest(out)["shards"]:
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the run ended before it could be interrupted"
        os.killpg(driver.pid, sig)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    return subprocess.CompletedProcess(command, driver.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """2,000 shards of 10 rows: still running when the first shard is committed, however slow
    the machine is at polling (with 200 a loaded run once finished before the signal); the
    interrupted runs stop after a few shards, so the length costs nothing."""
    path = tmp_path_factory.mktemp("long") / "long.parquet"
    pq.write_table(pa.table({"text": [t for t in sample_passages(2000, seed=5, max_chars=200)] * 10}), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_in_the_cli_prints_one_line_and_exits_130(cluster, long_corpus, tmp_path, sig, code):
    """Issue 24: Ctrl-C printed a 31-line traceback from inside Ray. SIGTERM (`ray job stop`)
    gives the same line; it exited 15 silently (ray.init replaced the CLI's handler)."""
    out = tmp_path / "out"
    done = _interrupt_after_first_commit(
        [sys.executable, "jobs/embed_corpus.py", "--input", str(long_corpus), "--output", str(out),
         "--num-workers", "1", "--shard-rows", "10", "--dtype", "float32", "--no-progress"],
        out, cluster, sig)
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    committed = len(read_manifest(out)["shards"])
    assert line == (f"interrupted: {committed} of 2000 shards committed in {out}; rerun with the "
                    "same output to resume") and committed >= 1


@pytest.mark.slow
def test_ctrl_c_in_pipeline_run_is_a_clean_keyboard_interrupt(cluster, long_corpus, tmp_path):
    out = tmp_path / "out"
    done = _interrupt_after_first_commit(
        [sys.executable, "-c", _RUN_IN_SCRIPT, str(long_corpus), str(out)], out, cluster)
    assert done.returncode == 1, done.stderr[-3000:]  # an uncaught KeyboardInterrupt subclass
    assert "pipeline.errors.RunInterrupted: interrupted: " in done.stderr
    assert "site-packages/ray" not in done.stderr, done.stderr[-3000:]  # no frame of Ray's


POISON = 45  # in shard 2 (rows 40..59), neither a bad text nor a repeated id


@pytest.mark.slow
def test_a_row_that_kills_its_worker_is_isolated_and_the_rest_embedded(cluster, corpus, reference, tmp_path):
    """Issue 24: one row killed its worker on every try, the shard failed 3 times and so did
    every rerun. Now the shard is narrowed down to that row, which is reported as a bad row
    (the error as its reason), and everything else is embedded; a rerun finds the run done.
    One retry (`--max-retries 1`), not the default two: narrowing starts after the last retry,
    and each retry here is one more actor killed and started again (tests/pipeline/test_narrow.py
    counts the probes for any shard size)."""
    cluster[1].write_text(f"row {POISON}")  # every actor call that runs row 45 SIGKILLs itself
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    command = [sys.executable, "jobs/embed_corpus.py", "--input", corpus[0], "--output", str(out),
               *CLI_ARGS, "--max-retries", "1", "--summary-json", str(stats)]
    env = {**os.environ, "RAY_ADDRESS": cluster[0]}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        cluster[1].unlink()
    assert done.returncode == 4, done.stderr[-3000:]  # done, rows reported
    assert f"warning: input row(s) {POISON} failed alone" in done.stderr
    summary = json.loads(stats.read_text())
    assert summary["isolated_rows"] == [POISON] and summary["bad_rows_total"] == len(BAD) + 1
    table, errors = reference
    keep = np.array(table.column("id").to_pylist()) != f"d{POISON:04d}"
    got = pipeline.read_embeddings(out)
    assert got.column("id").to_pylist() == table.filter(pa.array(keep)).column("id").to_pylist()
    np.testing.assert_allclose(pipeline.to_numpy(got), pipeline.to_numpy(table)[keep], atol=1e-5, rtol=0)
    written = pq.read_table(out / "_errors.parquet")
    isolated = written.filter(pc.equal(written.column("row"), POISON)).to_pylist()
    assert len(isolated) == 1 and isolated[0]["id"] == f"d{POISON:04d}" and isolated[0]["shard"] == "000002"
    assert isolated[0]["reason"].startswith("the row fails alone (") and "Actor" in isolated[0]["reason"]
    others = written.filter(pc.not_equal(written.column("row"), POISON))
    assert others.equals(errors)  # every other report as in the uninterrupted run
    # A rerun of the finished output does nothing, without Ray or an actor
    # (pipeline/execution/rerun.py), says so (progress on: what a terminal shows) and still exits 4: rows
    # were reported.
    again = subprocess.run([c for c in command if c != "--no-progress"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    summary = json.loads(stats.read_text())
    assert again.returncode == 4 and summary["resumed_shards"] == N // SHARD_ROWS
    assert summary["workers"] == [] and "nothing to do: " in again.stdout, again.stdout[-2000:]
    # With a committed part gone, the rerun is a resume again: that shard is redone, the same.
    part = read_manifest(out)["shards"]["000005"]["path"]
    (out / part).unlink()
    redone = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert redone.returncode == 4 and json.loads(stats.read_text())["resumed_shards"] == N // SHARD_ROWS - 1
    assert f"part {part} of shard 000005 is missing or changed" in redone.stderr, redone.stderr[-2000:]
    final = pipeline.read_embeddings(out)
    assert final.column("id").equals(got.column("id"))
    np.testing.assert_allclose(pipeline.to_numpy(final), pipeline.to_numpy(got), atol=1e-6, rtol=0)
