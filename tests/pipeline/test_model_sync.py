"""The model on every node (issue 15 item 5) on a real multi-node Ray (tests/ray_nodes.py: a 0-CPU
head where the driver runs, two 1-CPU worker nodes) with the node cache in a temp folder
($PREFILL_EMBED_CACHE, set before the raylets start).

- a folder only the driver has: it is removed right after the driver described it, so the
  workers can only load their cached copy; vectors equal the engine's on the original folder;
- a second run copies nothing (the cache entry's files keep their mtime), and an actor reports
  that it loaded from the cache;
- a model on S3 (moto), credentials in the URI: same vectors, the secret in no cached file;
- `pipeline.Embedder` in Ray Data with a URI, and with `pipeline.model_spec` of a folder only
  the driver has: each worker node's cached copy, the same vectors;
- a file changed or removed after the driver hashed it: ModelSyncError naming the node and the
  file (redacted), nothing left in the cache that looks complete.
"""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

import pipeline
import pipeline.execution.driver
from pipeline.execution import model_sync
from pipeline.execution.model_sync import COMPLETE, ModelSyncError, ensure_local_model, model_spec
from pipeline.inputs.samples import sample_passages
from ray_nodes import multinode
from s3_server import SECRET

KEEP_WARM = False  # Ray Data and plain Ray tasks need the CPUs warm actors would hold (tests/conftest.py)

N = 48
RUN = {"num_workers": 2, "threads_per_worker": 1, "shard_rows": 12, "dtype": "float32",
       "progress": False}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("node-cache")


@pytest.fixture(scope="module")
def nodes(cache):
    with multinode([1, 1], env={model_sync.CACHE_ENV: str(cache)}) as started:
        yield started


@pytest.fixture(scope="module")
def minilm() -> Path:
    from workers.loading.model_folder import default_model_path
    return default_model_path()


@pytest.fixture(scope="module")
def texts():
    return sample_passages(N, seed=5, max_chars=200)


@pytest.fixture(scope="module")
def reference(minilm, texts):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(model=str(minilm), dtype="float32", num_threads=2)).embed(texts)


@pytest.fixture
def empty_cache(cache):
    for entry in cache.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return cache


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def after_spec(monkeypatch, action):
    """Run `action(spec)` in the driver right after it described the model (before any actor)."""
    def wrapped(model):
        spec = model_spec(model)
        action(spec)
        return spec
    monkeypatch.setattr(pipeline.execution.driver, "model_spec", wrapped)


@pytest.mark.slow
def test_a_folder_only_the_driver_has_is_copied_once_per_node(nodes, empty_cache, minilm, texts,
                                                              reference, tmp_path, monkeypatch):
    mine = tmp_path / "minilm"
    shutil.copytree(minilm, mine)
    with monkeypatch.context() as m:
        after_spec(m, lambda spec: shutil.rmtree(mine))  # the workers cannot see it any more
        result = pipeline.run(texts, model=str(mine), **RUN)
    np.testing.assert_allclose(result.embeddings, reference, atol=2e-5, rtol=0)
    assert all(w.shards for w in result.stats.workers)  # both worker nodes embedded
    [entry] = entries(empty_cache)  # two nodes, one cache folder here: one copy, no temporaries
    assert (entry / COMPLETE).is_file() and (entry / "minilm" / "model.safetensors").is_file()
    before = {p: p.stat().st_mtime_ns for p in entry.rglob("*") if p.is_file()}

    # A second run of the same folder (same bytes, so the same hash) copies nothing. New actors
    # (the warm ones, which would not look at the cache again, are stopped first).
    pipeline.shutdown()
    shutil.copytree(minilm, mine)
    again = pipeline.run(texts, model=str(mine), **RUN)
    np.testing.assert_allclose(again.embeddings, reference, atol=2e-5, rtol=0)
    assert entries(empty_cache) == [entry]
    assert {p: p.stat().st_mtime_ns for p in entry.rglob("*") if p.is_file()} == before

    # An actor on a worker node reports the cached folder as the one its engine loaded (the warm
    # actors hold every worker CPU: stopped first).
    pipeline.shutdown()
    import ray
    from pipeline.execution.actor import EmbedWorker
    from workers import EngineConfig
    spec = model_spec(str(mine))
    actor = ray.remote(EmbedWorker).options(num_cpus=1).remote(
        EngineConfig(model=str(mine), dtype="float32", num_threads=1), 1, spec)
    info = ray.get(actor.info.remote())
    ray.kill(actor)
    assert info["model_path"] == str(entry / "minilm")
    assert info["node_id"] != ray.get_runtime_context().get_node_id()


@pytest.mark.slow
def test_a_model_on_s3_is_read_by_each_node(nodes, empty_cache, moto, minilm, texts, reference):
    put_folder(moto, minilm, "bucket/models/minilm")
    result = pipeline.run(texts, model=moto.uri("bucket/models/minilm"), **RUN)
    np.testing.assert_allclose(result.embeddings, reference, atol=2e-5, rtol=0)
    [entry] = entries(empty_cache)
    assert (entry / "minilm" / "config.json").read_bytes() == (minilm / "config.json").read_bytes()
    assert not [p for p in entry.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_ray_data_embedder_takes_a_uri_or_a_driver_spec(nodes, empty_cache, moto, minilm, texts,
                                                        reference, tmp_path):
    import pyarrow as pa
    import ray
    put_folder(moto, minilm, "bucket/models/minilm-rd")
    mine = tmp_path / "minilm"
    shutil.copytree(minilm, mine)
    spec = pipeline.model_spec(str(mine))
    shutil.rmtree(mine)  # only the object store has its bytes now
    for model in (moto.uri("bucket/models/minilm-rd"), spec):
        for entry in entries(empty_cache):  # same bytes, same hash: each form copies afresh
            shutil.rmtree(entry)
        ds = ray.data.from_arrow(pa.table({"row": list(range(N)), "text": texts})).repartition(4)
        ds = ds.map_batches(pipeline.Embedder, fn_constructor_kwargs={
            "model": model, "dtype": "float32", "num_threads": 1}, compute=ray.data.ActorPoolStrategy(
            size=2), num_cpus=0, batch_format="pyarrow", batch_size=12)
        # num_cpus=0: the worker nodes have 1 CPU each; half a CPU per actor would leave no node a
        # whole CPU for Ray Data's repartition tasks (a deadlock, seen).
        table = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("row")
        got = np.stack([np.asarray(v.values, dtype=np.float32) for v in table.column("embedding")])
        np.testing.assert_allclose(got, reference, atol=2e-5, rtol=0)
        # The actors loaded a copy made for them: one entry (the nodes share this machine's cache
        # folder), complete, named as the source folder.
        [entry] = entries(empty_cache)
        assert (entry / COMPLETE).is_file() and (entry / "minilm-rd" if model is not spec else
                                                 entry / "minilm").joinpath("model.safetensors").is_file()
    assert not [p for p in empty_cache.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def put_folder(moto, folder: Path, key: str) -> None:
    fs = moto.fs()
    for path in folder.rglob("*"):
        if path.is_file():
            with fs.open_output_stream(f"{key}/{path.relative_to(folder)}") as f:
                f.write(path.read_bytes())


def _on_worker_node(spec):
    import ray
    return ray.get(ray.remote(num_cpus=1)(ensure_local_model).remote(spec))


@pytest.mark.slow
def test_a_changed_or_missing_file_names_the_node_and_the_file(nodes, empty_cache, moto, monkeypatch,
                                                               texts):
    fs = moto.fs()
    files = {"config.json": b'{"architectures": ["BertModel"]}', "vocab.txt": b"[PAD]\n[UNK]\n"}
    for name, body in files.items():
        with fs.open_output_stream(f"bucket/models/bad/{name}") as f:
            f.write(body)
    spec = model_spec(moto.uri("bucket/models/bad"))
    with fs.open_output_stream("bucket/models/bad/vocab.txt") as f:
        f.write(b"[PAD]\n[UNK]\n[CLS]\n")  # changed after the driver hashed it
    with pytest.raises(ModelSyncError) as changed:
        _on_worker_node(spec)
    fs.delete_file("bucket/models/bad/config.json")
    with pytest.raises(ModelSyncError) as missing:
        _on_worker_node(spec)
    for error, what in ((changed.value, "changed since the run started"), (missing.value, "is missing")):
        text = str(error)
        assert what in text and f"node {socket.gethostname()}" in text, text
        assert SECRET not in text and "s3://***@bucket/models/bad/" in text, text
    assert "vocab.txt" in str(changed.value) and "config.json" in str(missing.value)
    assert entries(empty_cache) == []  # nothing complete, no temporary left

    # Through pipeline.run: the actors fail to start, the run names the node and the file. (A
    # local folder's bytes are in the object store once hashed, so only a URI can change.)
    for name, body in files.items():
        with fs.open_output_stream(f"bucket/models/bad2/{name}") as f:
            f.write(body)

    def change(spec):
        with fs.open_output_stream("bucket/models/bad2/vocab.txt") as f:
            f.write(b"[UNK]\n")
    with monkeypatch.context() as m:
        after_spec(m, change)
        with pytest.raises(pipeline.WorkersLostError) as run_error:
            pipeline.run(texts, model=moto.uri("bucket/models/bad2"), **RUN)
    text = str(run_error.value)
    assert f"node {socket.gethostname()}" in text and "s3://***@bucket/models/bad2/vocab.txt?" in text, text
    assert SECRET not in text
