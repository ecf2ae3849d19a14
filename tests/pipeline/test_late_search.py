"""`pipeline.index.late_search` (and jobs/search.py without --index) over tokens / sparse / bge-m3
outputs written by `pipeline.run` on one local Ray, with tiny random folders
(tests/tiny_models.py).

The reference is brute force in NumPy over every row read back with `pipeline.read_tokens` /
`read_sparse` / `read_embeddings`, one document at a time, written from the formulas (ColBERT
MaxSim, sparse dot product, bge-m3's 0.4 dense + 0.2 sparse + 0.4 mean-MaxSim), never through
the module's vectorized code. Outputs span several parts and the search reads them in batches
of 3 rows, so the streaming and the heap are exercised across part and batch boundaries.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.index import late_search
from pipeline.errors import InputError
from pipeline.inputs.samples import sample_passages
from tiny_models import make_tiny_bge_m3, make_tiny_multi_vector, make_tiny_splade
from scripts import run_job

N = 16
COMMON = {"dtype": "float32", "progress": False, "num_workers": 1, "id_column": "pid",
          "threads_per_worker": 1}  # 1-CPU actors, as most modules: a warm pool carries over


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = sample_passages(N, seed=5, max_chars=160)
    table = pa.table({"pid": [f"d{i:02d}" for i in range(N)], "text": texts})
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(table, path)
    return str(path), texts


@pytest.fixture(scope="module")
def outputs(ray_local, corpus, tmp_path_factory):
    """task -> (output folder, query engine) for the three token-level tasks."""
    root = tmp_path_factory.mktemp("late")
    make_tiny_multi_vector(root / "mv")
    make_tiny_splade(root / "splade")
    make_tiny_bge_m3(root / "m3")
    runs = {"tokens": (root / "mv", {"max_part_bytes": 6000}),
            "sparse": (root / "splade", {"shard_rows": 5}),
            "bge-m3": (root / "m3", {"allow_pickle": True, "max_part_bytes": 40_000})}
    out = {}
    for task, (model, options) in runs.items():
        folder = root / f"out-{task}"
        result = pipeline.run(corpus[0], output=str(folder), model=model, task=task,
                              **COMMON, **options)
        assert result.stats.shards > 1, (task, result.stats.shards)  # several parts to stream
        manifest = pipeline.Manifest.load(pipeline.OutputFolder.open(str(folder)))
        out[task] = (folder, late_search.query_engine(manifest))
    return out


def brute_maxsim(q, doc, mean=False):
    total = sum(max(float(qi @ dj) for dj in doc) for qi in q)
    return total / len(q) if mean else total


def brute_sparse(q, doc):
    weights = dict(zip(q[0].tolist(), q[1].tolist()))
    return sum(weights.get(i, 0.0) * v for i, v in zip(doc[0].tolist(), doc[1].tolist()))


def brute_scores(task, folder, engine, query):
    """Every row's score for `query`, one row at a time: (ids, scores)."""
    if task == "tokens":
        ids = pipeline.read_tokens(folder).column("id").to_pylist()
        q = engine.embed_tokens([query], is_query=True)[0]
        docs = pipeline.read_tokens(folder, as_numpy=True)
        return ids, [brute_maxsim(q, d.astype(np.float32)) for d in docs]
    if task == "sparse":
        ids = pipeline.read_sparse(folder).column("id").to_pylist()
        q = engine.embed_sparse([query])[0]
        return ids, [brute_sparse(q, d) for d in pipeline.read_sparse(folder, as_numpy=True)]
    ids = pipeline.read_embeddings(folder).column("id").to_pylist()
    m3 = engine.embed_m3([query])
    dense = pipeline.read_embeddings(folder, as_numpy=True)
    sparse = pipeline.read_sparse(folder, as_numpy=True)
    tokens = pipeline.read_tokens(folder, as_numpy=True)
    return ids, [0.4 * float(dense[i] @ m3["dense"][0]) + 0.2 * brute_sparse(m3["sparse"][0], sparse[i])
                 + 0.4 * brute_maxsim(m3["colbert"][0], tokens[i].astype(np.float32), mean=True)
                 for i in range(len(ids))]


@pytest.mark.parametrize("task", ["tokens", "sparse", "bge-m3"])
def test_search_equals_brute_force_and_finds_the_passage_itself(outputs, corpus, task):
    folder, engine = outputs[task]
    texts = corpus[1]
    queries = [texts[3], texts[11]]
    hits = late_search.search(folder, queries, k=4, engine=engine, batch_rows=3)
    for query, row, own in zip(queries, hits, ("d03", "d11")):
        ids, scores = brute_scores(task, folder, engine, query)
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], i))[:4]
        print(task, [(h.id, round(h.score, 4)) for h in row], [(ids[i], round(scores[i], 4)) for i in order])
        assert [h.id for h in row] == [ids[i] for i in order]
        np.testing.assert_allclose([h.score for h in row], [scores[i] for i in order], rtol=1e-5, atol=1e-5)
        assert row[0].id == own  # the passage itself comes first
        assert [h.row for h in row] == order


def test_weights_change_the_hybrid_and_are_checked(outputs, corpus):
    folder, engine = outputs["bge-m3"]
    query = corpus[1][7]
    dense_only = late_search.search(folder, [query], k=N, weights=(1, 0, 0), engine=engine)[0]
    dense = pipeline.read_embeddings(folder, as_numpy=True) @ engine.embed_m3([query])["dense"][0]
    np.testing.assert_allclose(sorted(h.score for h in dense_only), sorted(dense), atol=1e-5)
    with pytest.raises(InputError, match="three numbers >= 0"):
        late_search.search(folder, [query], weights=(0.5, 0.5), engine=engine)


def test_export_sparse_round_trips(outputs, tmp_path):
    for task in ("sparse", "bge-m3"):
        folder = outputs[task][0]
        path = tmp_path / f"{task}.jsonl"
        assert late_search.export_sparse(folder, path) == N
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        table = pipeline.read_sparse(folder)
        assert [x["id"] for x in lines] == table.column("id").to_pylist()
        for line, (indices, values) in zip(lines, pipeline.read_sparse(folder, as_numpy=True)):
            assert set(line) == {"id", "indices", "values"}
            np.testing.assert_array_equal(np.asarray(line["indices"], np.int32), indices)
            np.testing.assert_array_equal(np.asarray(line["values"], np.float32), values)  # exact
    with pytest.raises(InputError, match="has no sparse vectors"):
        late_search.export_sparse(outputs["tokens"][0], tmp_path / "x.jsonl")


def test_search_cli_prints_the_passage_first(outputs, corpus, tmp_path):
    folder = outputs["sparse"][0]
    query = corpus[1][5]
    done = run_job("search.py", "--embeddings", str(folder), "--query", query, "-k", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "sparse output, exact sparse dot product, 16 rows" in lines[0]
    assert lines[1].split()[2] == "d05" and query[:20] in lines[1]  # the passage is shown
    out = tmp_path / "cli.jsonl"
    done = run_job("search.py", "--embeddings", str(folder), "--export-sparse", str(out))
    assert done.returncode == 0 and len(out.read_text().splitlines()) == N, done.stderr[-2000:]


def test_search_refuses_embeddings_without_index(ray_local, tmp_path):
    out = tmp_path / "dense"
    pipeline.run(["one passage", "another"], output=str(out), progress=False, num_workers=1)
    with pytest.raises(InputError, match="jobs/build_index.py"):
        late_search.search(out, ["one"])
    done = run_job("search.py", "--embeddings", str(out), "--query", "x")
    assert done.returncode == 2 and "--index" in done.stderr
