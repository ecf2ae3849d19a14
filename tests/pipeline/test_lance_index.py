"""The Lance index (pipeline/index/lance_index.py) against exact search (brute-force numpy) over
synthetic output folders (real parts and manifests, no Ray, no engine): local disk, and an S3
output indexed onto S3 (moto on 127.0.0.1). The search jobs over a real run's Lance index are
in test_index.py."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("lance", reason="pylance is in the optional extra 'index' (make setup installs it)")
from pipeline.index import Index, LanceIndex, build  # noqa: E402
from pipeline.index.lance_index import lance_location  # noqa: E402
from pipeline.output.manifest import Manifest  # noqa: E402
from pipeline.output.output_folder import OutputFolder  # noqa: E402
from pipeline.output.writer import part_table  # noqa: E402

N, HELD_OUT, DIM, K = 3000, 100, 64, 10


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 40 centres (text embeddings are clustered, not uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_output(location, vectors, ids, part_rows=700, normalize=True, dtype="float32"):
    """A finished task="embed" output folder holding `vectors` in parts of `part_rows`."""
    folder = OutputFolder.open(location)
    folder.create()
    manifest = Manifest.new(folder, {"id_column": "doc", "output_dtype": dtype, "engine": {
        "task": "embed", "dimensions": vectors.shape[1], "normalize": normalize}}, {})
    for k, start in enumerate(range(0, len(vectors), part_rows)):
        chunk = vectors[start:start + part_rows]
        record = folder.publish_part(f"{k:06d}", part_table(pa.array(ids[start:start + part_rows]), chunk,
                                                            None, "float32", {}), "parquet")
        manifest.commit(f"{k:06d}", {**record, "row_offset": start, "input_rows": len(chunk)})
    manifest.finish({})
    manifest.save(force=True)
    return folder


@pytest.fixture(scope="module")
def data():
    x = clustered(N + HELD_OUT, DIM)
    return x[:N], x[N:], [f"doc/{i:05d}" for i in range(N)]


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lance")
    synthetic_output(root / "emb", data[0], data[2])
    stats = build(root / "emb", root / "idx.lance", kind="lance")
    return root, stats


def exact(corpus, queries, k, metric="ip"):
    if metric == "ip":
        return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]
    d = ((queries[:, None, :] - corpus[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall(got, want):
    return float(np.mean([len({h[2] for h in g} & set(w.tolist())) / len(w) for g, w in zip(got, want)]))


def test_local_index_matches_exact_search(local, data):
    root, stats = local
    corpus, queries, ids = data
    assert stats["kind"] == "lance" and stats["vectors"] == N and stats["metric"] == "ip"
    assert stats["params"]["num_sub_vectors"] == DIM // 8 and stats["index_bytes"] > 0
    index = Index.load(root / "idx.lance")  # the one loader opens either kind
    assert isinstance(index, LanceIndex)
    assert index.meta == {k: v for k, v in json.loads((root / "idx.lance.json").read_text()).items()}
    got = index.search(queries, K)
    r = recall(got, exact(corpus, queries, K))
    print(f"lance recall@{K} vs exact over {HELD_OUT} held-out vectors: {r:.3f} ({stats['params']})")
    assert r >= 0.95
    for q, hits in enumerate(got):
        assert len(hits) == K
        assert [h[1] for h in hits] == sorted((h[1] for h in hits), reverse=True)  # best first
        for doc_id, score, row in hits:
            assert doc_id == ids[row]  # the id of the row, string ids kept
            assert score == pytest.approx(float(corpus[row] @ queries[q]), abs=1e-5)  # exact
    own = index.search(corpus[:50], 1)  # indexed vectors find themselves (IVF-PQ is approximate:
    found = sum(h[0][2] == i for i, h in enumerate(own))  # one whose partition is not probed may not)
    assert found >= 48, f"{found} of 50 indexed vectors found themselves first"
    assert index.search(queries[:1], K) == [got[0]]  # one query (no query_index column) alike


def test_rows_locate_the_part_and_row(local, data):
    root, _ = local
    index = Index.load(root / "idx.lance")
    table = index.dataset.to_table(columns=["id", "row", "shard", "part_row"]).sort_by("row")
    assert table.column("row").to_pylist() == list(range(N))
    assert table.column("id").to_pylist() == data[2]
    assert table.column("shard").to_pylist()[700] == "000001" and table.column("part_row").to_pylist()[701] == 1


def test_l2_metric_and_rebuild_in_place(data, tmp_path):
    corpus, queries, ids = data
    raw = corpus[:1000] * np.linspace(0.5, 2.0, 1000, dtype=np.float32)[:, None]  # not normalized
    synthetic_output(tmp_path / "emb", raw, ids[:1000], normalize=False)
    build(tmp_path / "emb", tmp_path / "idx", kind="lance", nlist=4)
    stats = build(tmp_path / "emb", tmp_path / "idx", kind="lance", nlist=4)  # replaces the first
    assert stats["metric"] == "l2" and stats["params"]["num_partitions"] == 4
    index = Index.load(tmp_path / "idx")
    got = index.search(queries[:20], 5)
    assert recall(got, exact(raw, queries[:20], 5, "l2")) >= 0.95
    for hits, q in zip(got, queries[:20]):
        assert [h[1] for h in hits] == sorted(h[1] for h in hits)  # smallest distance first
        assert hits[0][1] == pytest.approx(float(((raw[hits[0][2]] - q) ** 2).sum()), rel=1e-4)
    assert len(index.dataset.versions()) == 1  # the replaced build's files were removed


def test_s3_output_indexed_onto_s3(moto, data, local):
    corpus, queries, ids = data
    synthetic_output(moto.uri("bucket/emb"), corpus, ids)
    uri = moto.uri("bucket/indexes/idx.lance")
    stats = build(moto.uri("bucket/emb"), uri, kind="lance")
    assert stats["vectors"] == N and "Zq7Secret" not in json.dumps(stats)  # credentials redacted
    objects = moto.objects("bucket/indexes")
    assert "idx.lance.json" in objects and any(k.startswith("idx.lance/") for k in objects)
    index = Index.load(uri)
    got = index.search(queries, K)
    assert recall(got, exact(corpus, queries, K)) >= 0.95
    local_hits = Index.load(local[0] / "idx.lance").search(queries, K)
    assert [[h[2] for h in g] for g in got] == [[h[2] for h in g] for g in local_hits]


def test_lance_location_and_refusals(data, local, tmp_path):
    uri, options = lance_location("s3://K:S@bucket/x.lance?scheme=http&endpoint_override=127.0.0.1:9&region=eu-west-1")
    assert uri == "s3://bucket/x.lance"
    assert options == {"aws_access_key_id": "K", "aws_secret_access_key": "S", "aws_region": "eu-west-1",
                       "aws_endpoint": "http://127.0.0.1:9", "allow_http": "true"}
    with pytest.raises(ValueError, match=r"URI options \['colour'\] are not understood"):
        lance_location("s3://bucket/x?colour=red")
    root = local[0]
    with pytest.raises(ValueError, match="inside the embeddings folder"):
        build(root / "emb", root / "emb" / "idx", kind="lance")
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="exists and is not an index built here"):
        build(root / "emb", tmp_path / "mine", kind="lance")
    binary = synthetic_output(tmp_path / "bin", data[0][:100], data[2][:100], dtype="ubinary")
    with pytest.raises(ValueError, match="ubinary embeddings; the lance kind indexes float"):
        build(binary.path, tmp_path / "b.lance", kind="lance")
    with pytest.raises(ValueError, match="needs at least 16 vectors"):
        build(synthetic_output(tmp_path / "tiny", data[0][:8], data[2][:8]).path, tmp_path / "t", kind="lance")
