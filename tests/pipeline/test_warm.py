"""Warm actors (issue 16 item 4): later `pipeline.run` calls in one process reuse the engine
actors when the worker settings match (rebuilding their engines in place when the engine settings
differ), and nothing of one run leaks into the next.

One local Ray for the module (the `cluster` fixture, whose actors see $PIPELINE_CRASH_FILE);
the bundled MiniLM in float32 on a few short texts, compared with the engine in this process.
An actor is recognised by its Ray actor id and its process id: the same pair means the same
process, so its model was not loaded again.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.exceptions import RayActorError

import pipeline
import shared_ray
from pipeline.execution import warm
from pipeline.inputs.samples import sample_passages
from pipeline.output.manifest import read_manifest

N, SHARD_ROWS = 40, 10
RUN = {"num_workers": 1, "dtype": "float32", "shard_rows": SHARD_ROWS, "progress": False}


@pytest.fixture(scope="module")
def texts():
    return sample_passages(N, seed=5, max_chars=160)


@pytest.fixture(scope="module")
def engine_vectors(texts):
    """The engine alone, in this process: what every run must return (float32, max_length 256 and 32)."""
    from workers import Engine, EngineConfig
    return {length: Engine(EngineConfig(dtype="float32", max_length=length)).embed(texts)
            for length in (None, 32)}


def actors() -> list[tuple[str, int]]:
    """(actor id, pid) of each warm actor; [] when none is warm."""
    infos = ray.get([h.info.remote() for h in handles()])
    return [(i["actor_id"], i["pid"]) for i in infos]


def handles() -> list:
    pool = warm.warm_pool()
    return [w.handle for w in pool.workers] if pool is not None else []


def is_dead(handle, within: float = 60.0) -> bool:
    """The actor is gone within `within` seconds (`ray.kill` is asynchronous: a call made just
    after it may still be answered)."""
    deadline = time.monotonic() + within
    while True:
        try:
            ray.get(handle.info.remote(), timeout=120)
        except RayActorError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def test_same_settings_reuse_the_actors_and_give_the_same_vectors(cluster, texts, engine_vectors):
    pipeline.shutdown()  # start from no warm actor, whatever ran before in this process
    first = pipeline.run(texts, **RUN)
    warm_actors = actors()
    assert len(warm_actors) == 1 and ray.is_initialized()
    second = pipeline.run(texts, **RUN)
    assert actors() == warm_actors  # same actor, same process: no new start, no model load
    assert second.stats.startup_seconds < first.stats.startup_seconds
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    np.testing.assert_allclose(second.embeddings, engine_vectors[None], atol=1e-5, rtol=0)
    assert [w.shards for w in second.stats.workers] == [N // SHARD_ROWS]  # per-run bookkeeping


def test_other_engine_settings_rebuild_the_engine_in_the_same_actor(cluster, texts, engine_vectors, tmp_path):
    _, crash_file = cluster
    pipeline.shutdown()  # actors started for max_length 32, then given the default settings
    short = pipeline.run(texts, **RUN, max_length=32)
    warm_actors = actors()
    np.testing.assert_allclose(short.embeddings, engine_vectors[32], atol=1e-5, rtol=0)
    default = pipeline.run(texts, **RUN)
    assert actors() == warm_actors  # the same process: only the engine was built again
    np.testing.assert_allclose(default.embeddings, engine_vectors[None], atol=1e-5, rtol=0)
    # Ray restarts the actor mid-run: its constructor replays the settings it was started with
    # (max_length 32); it must rebuild this run's engine before its next shard.
    crash_file.write_text("000002 mid_shard")
    again = pipeline.run(texts, output=str(tmp_path / "out"), **RUN)
    assert not crash_file.exists(), "the crash point was never reached"
    assert [w.restarts for w in again.stats.workers] == [1]
    np.testing.assert_allclose(pipeline.read_embeddings(tmp_path / "out", as_numpy=True),
                               engine_vectors[None], atol=1e-5, rtol=0)


def test_a_run_refused_for_its_input_or_settings_keeps_the_actors(cluster, texts, engine_vectors, tmp_path):
    """Refused after the actors started (the engine's part of the fingerprint is known only then;
    a bad row is found by the actor reading it): the actors are fine and stay warm."""
    out = tmp_path / "out"
    pipeline.run(texts, output=str(out), **RUN)
    warm_actors = actors()
    with pytest.raises(pipeline.FingerprintMismatch, match="dimensions"):
        pipeline.run(texts, output=str(out), **RUN, dimensions=64)
    assert actors() == warm_actors
    with_null = pa.table({"text": [*texts[:-1], None]})  # one shard: nothing else in flight
    with pytest.raises(pipeline.BadRowsError, match=f"row {N - 1}"):
        pipeline.run(with_null, **{**RUN, "shard_rows": N}, on_bad_row="error")
    assert actors() == warm_actors
    again = pipeline.run(texts, **RUN)
    np.testing.assert_allclose(again.embeddings, engine_vectors[None], atol=1e-5, rtol=0)


def test_more_workers_start_beside_the_warm_ones(cluster, texts, engine_vectors):
    one = {**RUN, "threads_per_worker": 1}
    pipeline.run(texts, **one)
    first = actors()
    two = pipeline.run(texts, **{**one, "num_workers": 2}, max_length=32)  # more workers, other engine
    assert len(actors()) == 2 and actors()[0] == first[0]  # the warm one kept (rebuilt), one started
    assert len(two.stats.workers) == 2 and sum(w.shards for w in two.stats.workers) == N // SHARD_ROWS
    np.testing.assert_allclose(two.embeddings, engine_vectors[32], atol=1e-5, rtol=0)
    again = pipeline.run(texts, **one)  # fewer than warm: all of them are used, none started
    assert actors()[:1] == first and len(actors()) == 2 and len(again.stats.workers) == 2
    np.testing.assert_allclose(again.embeddings, engine_vectors[None], atol=1e-5, rtol=0)


def test_other_worker_settings_replace_the_actors(cluster, texts, engine_vectors):
    pipeline.run(texts, **RUN)
    (old, _), = actors()
    old_handle = handles()[0]
    two = pipeline.run(texts, **{**RUN, "threads_per_worker": 1})  # 2 threads before: a new process
    (new, _), = actors()
    assert new != old and is_dead(old_handle)  # the old actor was killed, not left holding its CPUs
    np.testing.assert_allclose(two.embeddings, engine_vectors[None], atol=1e-5, rtol=0)


def test_shutdown_releases_the_actors_but_not_a_ray_the_user_started(cluster, texts, engine_vectors):
    pipeline.run(texts, **RUN)
    (old, _), = actors()
    old_handle = handles()[0]
    pipeline.shutdown()
    assert actors() == [] and is_dead(old_handle)
    assert ray.is_initialized()  # the fixture's Ray: never ours to stop
    again = pipeline.run(texts, **RUN)
    assert actors()[0][0] != old
    np.testing.assert_allclose(again.embeddings, engine_vectors[None], atol=1e-5, rtol=0)
    last_handle = handles()[0]
    pipeline.run(texts, **RUN, keep_warm=False)  # uses the warm actor, then stops it
    assert actors() == [] and is_dead(last_handle) and ray.is_initialized()


def test_resume_into_an_output_folder_with_warm_actors(cluster, texts, engine_vectors, tmp_path):
    pipeline.run(texts, **RUN)
    warm_actors = actors()
    out = tmp_path / "out"
    pipeline.run(texts, output=str(out), **RUN)
    manifest = read_manifest(out)
    for shard in ("000001", "000003"):  # two committed parts vanish: a rerun redoes them
        (out / manifest["shards"][shard]["path"]).unlink()
    resumed = pipeline.run(texts, output=str(out), **RUN)
    assert actors() == warm_actors
    assert resumed.stats.resumed_shards == N // SHARD_ROWS - 2 and resumed.stats.rows == 2 * SHARD_ROWS
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == list(range(N))
    np.testing.assert_allclose(pipeline.to_numpy(table), engine_vectors[None], atol=1e-5, rtol=0)


def test_a_crash_in_a_warm_actor_does_not_reach_the_next_run(cluster, texts, engine_vectors, tmp_path):
    _, crash_file = cluster
    pipeline.run(texts, **RUN)
    (old, _), = actors()
    crash_file.write_text("000002 mid_shard")  # the warm actor SIGKILLs itself on shard 2, once
    crashed = pipeline.run(texts, output=str(tmp_path / "a"), **RUN)
    assert not crash_file.exists(), "the crash point was never reached"
    assert [w.restarts for w in crashed.stats.workers] == [1] and crashed.stats.retries >= 1
    assert actors() == []  # a restarted actor is not kept: the next run gets a whole restart budget
    crash_file.write_text("000001 after_write")
    # The shard named is the one the actor died in, or the other one it held (DEPTH 2): which
    # of shards 0 and 1 takes the engine first is a race between the actor's two threads.
    with pytest.raises(pipeline.ShardFailedError, match=r"shard 00000[012] .*failed 1 times"):
        pipeline.run(texts, output=str(tmp_path / "b"), **{**RUN, "max_retries": 0})
    assert not crash_file.exists() and actors() == []  # a failed run stops its actors
    committed = len(read_manifest(tmp_path / "b")["shards"])
    after = pipeline.run(texts, **RUN)
    assert [w.restarts for w in after.stats.workers] == [0] and after.stats.retries == 0
    assert actors()[0][0] != old
    np.testing.assert_allclose(after.embeddings, engine_vectors[None], atol=1e-5, rtol=0)
    resumed = pipeline.run(texts, output=str(tmp_path / "b"), **RUN)  # the failed run resumes
    assert resumed.stats.resumed_shards == committed < N // SHARD_ROWS
    np.testing.assert_allclose(pipeline.read_embeddings(tmp_path / "b", as_numpy=True),
                               engine_vectors[None], atol=1e-5, rtol=0)


def test_a_new_ray_session_forgets_the_old_actors(cluster, texts, engine_vectors):
    pipeline.run(texts, **RUN)
    (old, _), = actors()
    ray.shutdown()  # the user restarts Ray: the warm actors died with the old session
    shared_ray.start()  # the worker's shared Ray from now on (tests/shared_ray.py)
    assert warm.warm_pool() is None
    again = pipeline.run(texts, **RUN)
    assert actors()[0][0] != old
    np.testing.assert_allclose(again.embeddings, engine_vectors[None], atol=1e-5, rtol=0)
    pipeline.shutdown()


def test_a_ray_the_pipeline_starts_runs_its_actors_at_nice_0(cluster, texts, engine_vectors):
    """Ray starts workers at nice 15; a local Ray the pipeline starts sets them to 0
    (pipeline/execution/cluster.py: the actors are the work). Last in the module: it restarts Ray."""
    ray.shutdown()
    try:
        result = pipeline.run(texts, **RUN, address="local")  # the pipeline starts a Ray, keeps it
        [info] = ray.get([h.info.remote() for h in handles()])
        assert info["nice"] == 0 and os.nice(0) == 0
        assert "RAY_worker_niceness" not in os.environ  # set only while Ray started
        np.testing.assert_allclose(result.embeddings, engine_vectors[None], atol=1e-5, rtol=0)
        pipeline.shutdown()
        assert not ray.is_initialized()  # the pipeline's own Ray goes with its warm actors
    finally:
        if not ray.is_initialized():
            shared_ray.start()
