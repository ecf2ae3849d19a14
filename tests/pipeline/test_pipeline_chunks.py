"""task="chunks" through the pipeline: one Ray run of a few dozen documents (late chunking,
string ids, a pass-through column, a blank text and a repeated id), checked row for row against
`Engine.embed_chunks` in this process (float32); a rerun resumes (nothing redone); the index
and search jobs find chunks and print the document id and span; the caller's spans column;
every output precision, encoded and read back. One Ray start, one actor (the spans run reuses
the warm one)."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.errors import InputError
from pipeline.output import quantize, writer
from pipeline.tasks import TASKS
from scripts import run_job

N = 36


@pytest.fixture(scope="module")
def docs():
    from pipeline.inputs.samples import sample_passages
    passages = sample_passages(3 * N, seed=7, max_chars=400)
    texts = [" ".join(passages[3 * i:3 * i + 3]) for i in range(N)]
    texts[5] = "   "                                   # blank: a bad row
    ids = [f"doc/{i:03d}" for i in range(N)]
    ids[9] = ids[8]                                    # a repeated id: both reported
    return ids, texts


@pytest.fixture(scope="module")
def engine():
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(task="chunks", dtype="float32", max_length=128, num_threads=2))


@pytest.fixture(scope="module")
def run(ray_local, docs, tmp_path_factory):
    ids, texts = docs
    root = tmp_path_factory.mktemp("chunks")
    pq.write_table(pa.table({"doc": ids, "text": texts, "n": list(range(N))}), root / "corpus.parquet")
    kwargs = dict(output=root / "out", id_column="doc", passthrough_columns=("n",), chunking="late",
                  chunk_tokens=48, chunk_overlap=8, max_length=128, dtype="float32", num_workers=1,
                  shard_rows=12, progress=False)
    first = pipeline.run(str(root / "corpus.parquet"), **kwargs)
    again = pipeline.run(str(root / "corpus.parquet"), **kwargs)   # resumes: every shard is done
    return root, first, again


def test_chunk_rows_equal_embed_chunks(run, docs, engine):
    root, first, again = run
    ids, texts = docs
    table = pipeline.read_embeddings(root / "out")
    assert table.column_names == ["id", "chunk", "char_start", "char_end", "embedding", "n"]
    good = [i for i in range(N) if i != 5]
    want = engine.embed_chunks([texts[i] for i in good], chunk_tokens=48, chunk_overlap=8)
    rows = [(ids[i], k, s, e, i) for i, chunks in zip(good, want) for k, (s, e, _) in enumerate(chunks)]
    got = list(zip(*(table.column(c).to_pylist() for c in ("id", "chunk", "char_start", "char_end", "n"))))
    assert got == rows
    vectors = np.stack([v for chunks in want for *_, v in chunks])
    np.testing.assert_allclose(pipeline.to_numpy(table), vectors, atol=2e-5, rtol=0)
    assert len(rows) > 2 * N                                   # several chunks per document
    stats = first.stats
    assert (stats.rows, stats.bad_rows, stats.duplicate_ids) == (N - 1, 1, 2)
    assert again.stats.resumed_shards == 3 and again.stats.rows == 0
    errors = pq.read_table(root / "out" / "_errors.parquet").to_pylist()
    assert [(e["id"], e["row"], e["reason"]) for e in errors] == [
        ("doc/005", 5, "text column 'text' is whitespace only"),
        ("doc/008", 8, "duplicate id"), ("doc/008", 9, "duplicate id")]
    fingerprint = first.manifest["fingerprint"]["engine"]
    assert (fingerprint["chunking"], fingerprint["chunk_tokens"], fingerprint["chunk_overlap"]) == ("late", 48, 8)


def test_index_and_search_jobs_find_chunks(run, docs, tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is the optional extra 'index'")
    from pipeline.index import build  # what jobs/build_index.py calls
    root, *_ = run
    ids, texts = docs
    index = tmp_path / "chunks.faiss"
    assert build(root / "out", index, "flat", threads=1)["vectors"] == pipeline.read_embeddings(root / "out").num_rows
    keys = pq.read_table(str(index) + ".ids.parquet")
    assert keys.column_names == ["id", "chunk", "char_start", "char_end"]
    table = pipeline.read_embeddings(root / "out")
    row = 17                                                 # query with one chunk's own text
    doc, start, end = (table.column(c)[row].as_py() for c in ("id", "char_start", "char_end"))
    span = texts[ids.index(doc)][start:end]
    found = run_job("search.py", "--index", str(index), "--query", span, "-k", "3", "--chars", "30")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert "chunk vectors" in lines[0]
    top = lines[1].split()
    assert top[2] == doc and top[5] == f"[{start}:{end}]", lines[1]
    assert repr(span[:30])[1:-1] in lines[1]                 # the span's text, from the input


def test_spans_column_and_bad_spans(run, docs, engine):
    root, *_ = run
    ids, texts = docs
    spans = [[[0, 10], [10, len(t)]] for t in texts[:6]]
    spans[1] = [[0, len(texts[1]) + 1]]                      # past the end: a bad row
    spans[2] = []                                            # none: a bad row
    data = pa.table({"text": texts[:6], "spans": spans})
    out = pipeline.read_embeddings(pipeline.run(  # the first run's engine settings: its warm actor
        data, output=root / "spans", spans_column="spans", chunking="late", chunk_tokens=48,
        chunk_overlap=8, max_length=128, dtype="float32", num_workers=1, progress=False).output)
    good = [0, 3, 4]
    want = engine.embed_chunks([texts[i] for i in good], spans=[[tuple(s) for s in spans[i]] for i in good])
    assert out.column("id").to_pylist() == [0, 0, 3, 3, 4, 4]
    np.testing.assert_allclose(pipeline.to_numpy(out), np.stack([v for c in want for *_, v in c]),
                               atol=2e-5, rtol=0)
    errors = {e["row"]: e["reason"] for e in pq.read_table(root / "spans" / "_errors.parquet").to_pylist()}
    assert "span 0 [0," in errors[1] and "is empty" in errors[2] and "whitespace only" in errors[5]
    with pytest.raises(InputError, match="spans column 'text' of the input .* has type string"):
        pipeline.run(data, spans_column="text", chunking="late", progress=False)
    with pytest.raises(InputError, match="spans_column='spans' names the chunk spans"):
        pipeline.run(data, spans_column="spans", progress=False)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "ubinary"])
def test_every_output_precision_encodes_chunk_rows(dtype, engine, docs):
    _, texts = docs
    chunks = engine.embed_chunks(texts[:3], chunk_tokens=32)
    vectors = np.stack([v for c in chunks for *_, v in c])
    quant = quantize.record(dtype, engine.dim, quantize.calibrate(vectors) if dtype == "int8" else None)
    arrays = TASKS["chunks"].arrays({"chunks": chunks, "width": engine.dim}, dtype, quant)
    part = writer.task_part(pa.array(np.repeat([0, 1, 2], [len(c) for c in chunks])), arrays, None, {}, quant)
    back = writer.to_numpy(pq.read_table(pa.BufferReader(writer.encode(part, "parquet"))), dequantize=True)
    cos = (back * vectors).sum(1) / np.linalg.norm(back, axis=1)
    assert cos.min() > {"float32": 0.999999, "float16": 0.9999, "int8": 0.99, "ubinary": 0.7}[dtype]
    assert part.column("chunk").to_pylist() == [k for c in chunks for k in range(len(c))]
    assert part.schema.field("embedding").type.value_type == pa.from_numpy_dtype(quantize.STORED_DTYPES[dtype])
