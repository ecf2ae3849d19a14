"""jobs/rerank.py end to end: a tiny flat index over the default model's embeddings, a tiny
random-weight cross-encoder, and the printed / written order checked against sorting
`Engine.score` of the retrieved passages (the engine itself is tested against CrossEncoder).

The first test runs the script in a subprocess; the others call its `main(argv)` in this
process (importing torch and the engine again costs ~15 s per subprocess on a busy 2-core box).
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
from tiny_models import make_tiny_classifier

faiss = pytest.importorskip("faiss", reason="faiss-cpu is the optional extra 'index' (make setup installs it)")
from pipeline.index import Index, build  # noqa: E402  (needs faiss)
from scripts import run_job

ROOT = Path(__file__).resolve().parents[2]
N = 40


@pytest.fixture(scope="module")
def corpus(ray_local, tmp_path_factory):
    """(index path, ids, texts, cross-encoder folder)."""
    from pipeline.inputs.samples import sample_passages
    root = tmp_path_factory.mktemp("rerank")
    texts = sample_passages(N, seed=5, max_chars=200)
    ids = [f"p{i:03d}" for i in range(N)]
    pq.write_table(pa.table({"key": ids, "text": texts}), root / "corpus.parquet")
    pipeline.run(str(root / "corpus.parquet"), output=root / "embeddings", id_column="key",
                 dtype="float32", num_workers=1, progress=False)
    build(root / "embeddings", root / "flat.faiss", "flat", threads=1)
    make_tiny_classifier(root / "ce", "BertForSequenceClassification")
    return root / "flat.faiss", ids, texts, root / "ce"


@pytest.fixture(scope="module")
def reranker(corpus):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(model=str(corpus[3]), task="score", dtype="float32"))


def _rerank(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "rerank.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_printed_order_is_the_engine_scores_sorted(corpus, reranker):
    index, ids, texts, ce = corpus
    query = texts[3][:60]
    done = _rerank("--index", str(index), "--query", query, "-k", str(N), "--reranker", str(ce),
                   "-n", "5", "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    lines = [ln.split() for ln in done.stdout.splitlines()[1:6]]
    # k = the whole corpus: the reranked top 5 are the 5 best of all passages by the engine.
    scores = reranker.score([(query, t) for t in texts])
    best = sorted(range(N), key=lambda i: (-scores[i], i))[:5]
    assert [ln[0] for ln in lines] == ["1", "2", "3", "4", "5"]
    assert [ln[2] for ln in lines] == [ids[i] for i in best]
    np.testing.assert_allclose([float(ln[1]) for ln in lines], scores[best], atol=1e-4)
    assert repr(texts[best[0]][:30])[1:-1] in done.stdout.splitlines()[1]  # the passage itself


def test_queries_file_to_ranked_parquet(corpus, reranker, tmp_path):
    index, ids, texts, ce = corpus
    queries = [texts[7][:50], texts[20][:50]]
    pq.write_table(pa.table({"qid": ["a", "b"], "query": queries}), tmp_path / "q.parquet")
    out = tmp_path / "ranked.parquet"
    done = run_job("rerank.py", "--index", str(index), "--queries", str(tmp_path / "q.parquet"),
                   "--query-id-column", "qid", "-k", "8", "--reranker", str(ce), "-n", "3",
                   "--dtype", "float32", "--output", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    table = pq.read_table(out)
    assert table.column_names == ["query_id", "query", "rank", "score", "id", "retrieval_rank",
                                  "retrieval_score", "passage"]
    assert table.schema.field("score").type == pa.float32()
    # The k hits the job retrieved: the same flat search with the corpus's engine.
    from workers import Engine, EngineConfig
    hits = Index.load(index).search(Engine(EngineConfig(dtype="float32")).embed(queries), 8)
    by_id = dict(zip(ids, texts))
    for qid, query, row in zip(["a", "b"], queries, hits):
        got = table.filter(pa.compute.equal(table.column("query_id"), qid)).to_pylist()
        retrieved = [h[0] for h in row]
        scores = reranker.score([(query, by_id[d]) for d in retrieved])
        order = sorted(range(len(retrieved)), key=lambda i: (-scores[i], i))[:3]
        assert [r["id"] for r in got] == [retrieved[i] for i in order]
        assert [r["rank"] for r in got] == [1, 2, 3]
        assert [r["retrieval_rank"] for r in got] == [i + 1 for i in order]
        np.testing.assert_allclose([r["score"] for r in got], scores[order], atol=1e-5)
        assert all(r["passage"] == by_id[r["id"]] for r in got)


def test_refusals_exit_2(corpus, tmp_path):
    from workers.loading.model_folder import default_model_path
    index, _, _, ce = corpus
    # An embedding model is no reranker: the engine names the architecture and the task.
    done = run_job("rerank.py", "--index", str(index), "--query", "x", "--reranker", str(default_model_path()))
    assert done.returncode == 2 and "SentenceTransformer folder, which serves task 'embed'" in done.stderr
    pq.write_table(pa.table({"text": ["q"]}), tmp_path / "q.parquet")
    done = run_job("rerank.py", "--index", str(index), "--queries", str(tmp_path / "q.parquet"),
                   "--reranker", str(ce))
    assert done.returncode == 2 and "its columns are ['text']" in done.stderr


def test_lance_index_retrieves_and_reranks_like_flat(corpus, reranker, tmp_path):
    """--index names a Lance index (kind="lance"): on this 40-passage corpus its hits are the
    exact ones (refine re-scores every candidate), so the ranked output equals the flat one's."""
    pytest.importorskip("lance", reason="pylance is in the optional extra 'index'")
    index, _, texts, ce = corpus
    build(index.parent / "embeddings", tmp_path / "idx.lance", "lance")
    pq.write_table(pa.table({"query": [texts[7][:50], texts[20][:50]]}), tmp_path / "q.parquet")
    out = {}
    for kind, path in (("flat", index), ("lance", tmp_path / "idx.lance")):
        out[kind] = tmp_path / f"{kind}.parquet"
        done = run_job("rerank.py", "--index", str(path), "--queries", str(tmp_path / "q.parquet"), "-k", "8",
                       "--reranker", str(ce), "-n", "3", "--dtype", "float32", "--output", str(out[kind]))
        assert done.returncode == 0, done.stderr[-2000:]
    lance, flat = pq.read_table(out["lance"]).to_pylist(), pq.read_table(out["flat"]).to_pylist()
    assert [r["id"] for r in lance] == [r["id"] for r in flat] and len(lance) == 6
    np.testing.assert_allclose([r["retrieval_score"] for r in lance], [r["retrieval_score"] for r in flat], atol=1e-5)
