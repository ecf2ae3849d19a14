"""Indexes over a pipeline output (string ids) against the exact flat index, and the search job.

The corpus is embedded once with `pipeline.run` (engine dtype float32, so a passage queried with
its own text scores ~1.0); queries are embedded by `Engine` in this process or by jobs/search.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline

faiss = pytest.importorskip("faiss", reason="faiss-cpu is the optional extra 'index' (make setup installs it)")
from pipeline.index import Index, build  # noqa: E402  (needs faiss)
from scripts import run_job

ROOT = Path(__file__).resolve().parents[2]
N, HELD_OUT = 150, 30


@pytest.fixture(scope="module")
def texts():
    from pipeline.inputs.samples import sample_passages
    return sample_passages(N + HELD_OUT, seed=11, max_chars=300)


@pytest.fixture(scope="module")
def embeddings(ray_local, texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    ids = [f"passage/{i:04d}" for i in range(N)]
    pq.write_table(pa.table({"key": ids, "text": texts[:N]}), root / "corpus.parquet", row_group_size=50)
    pipeline.run(str(root / "corpus.parquet"), output=root / "embeddings", id_column="key",
                 dtype="float32", num_workers=1, shard_rows=50, progress=False)
    return root / "embeddings", ids


@pytest.fixture(scope="module")
def queries(texts):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(dtype="float32", num_threads=2)).embed(texts)  # corpus, then held out


@pytest.fixture(scope="module")
def flat(embeddings, tmp_path_factory):
    path = tmp_path_factory.mktemp("flat") / "flat.faiss"
    build(embeddings[0], path, "flat", threads=1)
    return Index.load(path)


def recall(got, want, k):
    return float(np.mean([len({h[2] for h in g[:k]} & {h[2] for h in w[:k]}) / k for g, w in zip(got, want)]))


def test_flat_finds_each_passage_by_its_text(flat, embeddings, queries):
    hits = flat.search(queries[:N], 1)
    assert [h[0][0] for h in hits] == embeddings[1]  # recall@1 == 1.0, string ids mapped back
    assert min(h[0][1] for h in hits) > 0.9999


def test_ids_file_and_sidecar(flat, embeddings):
    assert flat.ids == pipeline.read_embeddings(embeddings[0], columns=["id"]).column("id").to_pylist()
    assert flat.meta["embeddings"] == str(embeddings[0]) and flat.meta["metric"] == "ip"
    assert flat.meta["vectors"] == N and flat.faiss_index.ntotal == N


def test_hnsw_and_ivfpq_recall_vs_flat(flat, embeddings, queries, tmp_path):
    held_out, k = queries[N:], 10
    want = flat.search(held_out, k)
    build(embeddings[0], tmp_path / "hnsw.faiss", "hnsw", threads=1)
    hnsw = recall(Index.load(tmp_path / "hnsw.faiss").search(held_out, k), want, k)
    stats = build(embeddings[0], tmp_path / "ivfpq.faiss", "ivfpq", nlist=4, m=16, nbits=4, threads=1)
    assert stats["params"] == {"nlist": 4, "m": 16, "nbits": 4, "nprobe": 4}
    ivfpq = Index.load(tmp_path / "ivfpq.faiss")
    got = ivfpq.search(held_out, k)
    ivf_recall = recall(got, want, k)
    print(f"recall@{k} vs flat over {HELD_OUT} held-out passages: hnsw {hnsw:.3f}, ivfpq {ivf_recall:.3f} "
          f"(chance {k / N:.3f}); ivfpq {stats['index_bytes']:,} bytes")
    assert hnsw >= 0.95  # a 150-node graph is searched almost exhaustively
    assert ivf_recall > 0.3  # PQ16x4 codes lose detail; 0.07 is chance
    assert all(isinstance(h[0], str) for row in got for h in row)


def test_build_refuses_bad_requests(embeddings, tmp_path):
    with pytest.raises(ValueError, match="inside the embeddings folder"):
        build(embeddings[0], embeddings[0] / "index.faiss", "flat")
    with pytest.raises(ValueError, match="kind='ivf' is not supported"):
        build(embeddings[0], tmp_path / "x.faiss", "ivf")
    with pytest.raises(ValueError, match="needs at least max.nlist, 2..nbits. = 256"):
        build(embeddings[0], tmp_path / "x.faiss", "ivfpq", nbits=8)
    with pytest.raises(FileNotFoundError, match="no _manifest.json"):
        build(tmp_path, tmp_path / "y" / "x.faiss", "flat")


def test_build_and_search_jobs_end_to_end(embeddings, texts, tmp_path):
    index = tmp_path / "idx" / "flat.faiss"
    built = subprocess.run([sys.executable, str(ROOT / "jobs" / "build_index.py"), "--embeddings",
                            str(embeddings[0]), "--index", str(index), "--threads", "1"],
                           capture_output=True, text=True, check=True)
    assert f"over {N:,} x 384 float32 vectors" in built.stdout and index.exists()
    found = subprocess.run([sys.executable, str(ROOT / "jobs" / "search.py"), "--index", str(index),
                            "--query", texts[7], "-k", "3"], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    print("\n".join(lines))
    top = lines[1].split()
    assert top[0] == "1" and top[2] == "passage/0007" and float(top[1]) > 0.999
    assert repr(texts[7][:40])[1:-1] in lines[1]  # the passage itself, read from the input Parquet


def test_lance_kind_built_and_searched_by_the_jobs(flat, embeddings, texts, queries, tmp_path):
    """--kind lance through jobs/build_index.py, opened by Index.load, searched by jobs/search.py
    (in this process): the same hits as the exact flat index on this small corpus (1 partition,
    and refine_factor 10 re-scores every candidate with the stored vectors)."""
    pytest.importorskip("lance", reason="pylance is in the optional extra 'index'")
    index = tmp_path / "idx.lance"
    built = run_job("build_index.py", "--embeddings", str(embeddings[0]), "--index", str(index), "--kind", "lance")
    assert built.returncode == 0 and "built lance index (ip num_partitions=1" in built.stdout, built.stderr
    lance = Index.load(index)
    assert lance.meta["kind"] == "lance" and lance.meta["vectors"] == N
    k = 10
    got, want = lance.search(queries[N:], k), flat.search(queries[N:], k)
    assert [[h[0] for h in g] for g in got] == [[h[0] for h in w] for w in want]
    np.testing.assert_allclose([[h[1] for h in g] for g in got], [[h[1] for h in w] for w in want], atol=1e-5)
    found = run_job("search.py", "--index", str(index), "--query", texts[7], "-k", "3")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert "(lance index, ip, 150 vectors)" in lines[0]
    top = lines[1].split()
    assert top[0] == "1" and top[2] == "passage/0007" and float(top[1]) > 0.999
