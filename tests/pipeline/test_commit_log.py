"""The manifest's commit log (pipeline/output/commit_log.py, manifest.py) and the compact plan
(pipeline/inputs/shards.py `ShardPlan`, pipeline/execution/narrow.py `JobQueue`); no Ray, no engine.

The crash tests SIGKILL a synthetic driver (a forked child, or a subprocess for S3) at the log's
kill points (PIPELINE_CRASH_AT=after_log:N / fold_written:N / fold_switched:N) while it commits
shards of fake parts; the child prints each shard once `commit` returned. After the kill every
shard it printed is committed, with the same record, and a resume commits only the others.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.execution.narrow import Job, JobQueue
from pipeline.inputs.shards import ShardPlan, plan_shards
from pipeline.inputs.sources import Fragment
from pipeline.output import commit_log
from pipeline.output.manifest import Manifest, read_manifest
from pipeline.output.output_folder import OutputFolder
from pipeline.errors import OutputWriteError
from commit_driver import N, drive, record  # tests/commit_driver.py

ROOT = Path(__file__).resolve().parents[2]


def test_shard_plan_is_plan_shards_without_the_objects():
    rng = np.random.default_rng(3)
    fragments = [Fragment(f"f{i}", int(n)) for i, n in enumerate(rng.integers(0, 40, 30))]
    fragments[4] = Fragment("empty", 0)
    for rows in (1, 7, 25, 1000):
        plan = ShardPlan(fragments, rows)
        assert list(plan) == plan_shards(fragments, rows) and len(plan) == len(plan_shards(fragments, rows))
        picked = np.array([0, 3, len(plan) - 1]) if len(plan) > 3 else np.arange(len(plan))
        subset = plan.subset(picked)
        assert list(subset) == [plan_shards(fragments, rows)[k] for k in picked]
        assert subset.rows() == sum(s.num_rows for s in subset)


def test_job_queue_makes_jobs_lazily_and_puts_requeued_jobs_first():
    plan = ShardPlan([Fragment("f", 50)], 10)
    queue = JobQueue(plan)
    assert len(queue) == 5 and queue[0].shard.index == 0
    first = queue.popleft()
    queue.appendleft(Job(first.shard, alone=True))  # a retry goes first
    assert [queue.popleft().shard.index for _ in range(len(queue))] == [0, 1, 2, 3, 4] and not queue


def test_commits_fold_into_few_segments_and_load_back(tmp_path, monkeypatch):
    monkeypatch.setenv(commit_log.FOLD_ENV, "3")
    folder = OutputFolder.open(tmp_path)
    m = Manifest.new(folder, {"engine": {}}, {"num_shards": N})
    m.save(force=True)
    for k in range(N):
        m.commit(f"{k:06d}", record(k))
    segments = [t.num_rows for _, t in m.commits.segments]
    assert sum(segments) + len(m.commits.tail) == N and len(m.commits.tail) < 3
    assert len(segments) <= int(np.log2(N / 3)) + 1  # a binary counter of segments
    loaded = Manifest.load(folder)
    assert dict(loaded.shards.items()) == {f"{k:06d}": record(k) for k in range(N)}
    assert loaded.shards["000005"] == record(5) and "000023" not in loaded.shards
    assert loaded.shards.total("rows") == sum(10 + k for k in range(N))
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {"_manifest.json", *(p for p, _ in m.commits.segments), m._log}  # nothing else
    assert folder.stray_files(loaded.files()) == []


def test_a_torn_last_line_was_never_committed_and_damage_is_named(tmp_path):
    folder = OutputFolder.open(tmp_path)
    m = Manifest.new(folder, {}, {})
    m.save(force=True)
    for k in range(3):
        m.commit(f"{k:06d}", record(k))
    log = tmp_path / m._log
    with open(log, "ab") as f:
        f.write(b'{"shard":"000003","path":"part-0000')  # killed mid-append
    resumed = Manifest.load(folder)
    assert set(resumed.shards) == {"000000", "000001", "000002"}
    resumed.fold()  # what a resume does first: the torn log is folded away, a new one begins
    resumed.commit("000003", record(3))
    assert dict(Manifest.load(folder).shards.items()) == {f"{k:06d}": record(k) for k in range(4)}
    assert not log.exists()
    (tmp_path / resumed._log).write_text('{"shard":"000004"}\nnot json\n')
    with pytest.raises(OutputWriteError, match=r"log-000001\.jsonl line 2 is not a commit record"):
        Manifest.load(folder)


def test_a_version_1_manifest_loads_and_a_resume_rewrites_it(tmp_path):
    shards = {f"{k:06d}": record(k) for k in range(5)}
    (tmp_path / "_manifest.json").write_text(json.dumps(
        {"version": 1, "fingerprint": {"x": 1}, "plan": {}, "complete": True, "shards": shards}))
    folder = OutputFolder.open(tmp_path)
    assert dict(read_manifest(tmp_path)["shards"].items()) == shards  # readers: as it is
    m = Manifest.load(folder)
    m.save(force=True)  # the driver's resume
    body = json.loads((tmp_path / "_manifest.json").read_text())
    assert body["version"] == 2 and "shards" not in body and len(body["commits"]["segments"]) == 1
    assert dict(Manifest.load(folder).shards.items()) == shards


def _killed_child(tmp_path, folder: OutputFolder, point: str) -> list[int]:
    """Fork a synthetic driver killed at `point`; the shards it saw committed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: commit everything, printing to the pipe
        os.close(read)
        os.dup2(write, 1)
        os.environ["PIPELINE_CRASH_AT"] = point
        try:
            drive(folder, 0, N)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        acked = [int(line) for line in pipe.read().split()]
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, point
    return acked


@pytest.mark.parametrize("point", ["after_log:1", "after_log:7", "fold_written:1", "fold_switched:2",
                                   "fold_written:3", "fold_switched:4"])
def test_a_killed_driver_loses_no_commit_and_a_resume_redoes_none(tmp_path, monkeypatch, point):
    monkeypatch.setenv(commit_log.FOLD_ENV, "3")
    folder = OutputFolder.open(tmp_path)
    acked = _killed_child(tmp_path, folder, point)
    after_kill = Manifest.load(folder)
    committed = {int(k) for k in after_kill.shards}
    assert set(acked) <= committed <= set(range(N)) and committed  # nothing acknowledged is lost
    assert all(after_kill.shards[f"{k:06d}"] == record(k) for k in committed)
    resumed = Manifest.load(folder)
    resumed.fold()
    strays = folder.remove_strays(resumed.files())  # a fold's files no manifest names
    assert all(name.startswith("_commits/") for name in strays)
    redone = [k for k in range(N) if f"{k:06d}" not in resumed.shards]
    assert not set(redone) & committed
    for k in redone:
        resumed.commit(f"{k:06d}", record(k))
    final = Manifest.load(folder)
    assert dict(final.shards.items()) == {f"{k:06d}": record(k) for k in range(N)}


def test_object_store_log_is_one_object_per_batch_and_survives_a_kill(moto):
    """On S3 (moto): each batch of commits is one PUT; a SIGKILLed driver (a subprocess) loses
    none it acknowledged; a resume folds the objects away and commits only the rest."""
    uri = moto.uri("bucket/log-test")
    env = {**os.environ, "PIPELINE_CRASH_AT": "after_log:9", commit_log.FOLD_ENV: "100"}
    moto.counts.clear()
    child = subprocess.run([sys.executable, "tests/commit_driver.py", uri, "0", str(N)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    acked = [int(x) for x in child.stdout.split()]
    assert len(acked) == 8  # the 9th was durable, but the driver died before it saw so
    objects = moto.objects("bucket/log-test")
    logs = sorted(k for k in objects if k.startswith("_commits/log-"))
    assert len(logs) == 9 and moto.counts["PUT"] == 9 + 1  # one object per commit (+ _manifest.json)
    folder = OutputFolder.open(uri)
    assert {int(k) for k in Manifest.load(folder).shards} == set(range(9))
    drive(folder, 0, N)  # the resume, in this process
    final = Manifest.load(folder)
    assert dict(final.shards.items()) == {f"{k:06d}": record(k) for k in range(N)}
    left = set(moto.objects("bucket/log-test"))
    assert not {k for k in logs} & left  # the old generation's objects were folded away
