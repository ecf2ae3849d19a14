"""Incremental runs (`reuse=`, pipeline/execution/reuse.py): a corpus, then the same corpus with
5% of rows edited, 2% added and 1% removed. The reuse run must equal a fresh full run of the new
corpus (same ids in the same order, vectors at cosine 1.0 in fp32, same content hashes, same part
schema), copy the unchanged rows bit for bit from the previous output, and count exactly; a
previous output of other settings is refused naming the difference; a driver killed mid-run
resumes to the same output; an output on S3 reuses and is reused. One local Ray for the module (`cluster`: the killed driver is a CLI
subprocess that joins it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages
from pipeline.output.content_hash import HASH_COLUMN, row_hashes, sql_expression
from pipeline.output.manifest import read_manifest
from s3_server import SECRET  # the moto fixture is in conftest.py

ROOT = Path(__file__).resolve().parents[2]
N, SHARD_ROWS = 300, 50
EDITED, ADDED, REMOVED = 15, 6, 3  # 5%, 2%, 1% of N
RUN = {"id_column": "doc", "num_workers": 1, "shard_rows": SHARD_ROWS, "dtype": "float32",
       "progress": False,
       "threads_per_worker": 1}  # 1-CPU actors, as most modules: a warm pool carries over


def test_python_and_duckdb_hashes_agree():
    texts = ["héllo", "", "x" * 5000, "it's", "日本語", "a\x00b"]
    pairs = ["b", "c", "", "q'", "\u3000", "z"]
    rows = pa.table({"t": texts, "p": pairs})  # noqa: F841 (read by DuckDB by name)
    got = duckdb.sql(f"SELECT {sql_expression('query: ', ['t', 'p'])} FROM rows").fetchall()
    assert [bytes(r[0]) for r in got] == row_hashes("query: ", [texts, pairs]).to_pylist()
    # the byte-length prefixes keep the fields apart
    assert row_hashes("", [["ab"], ["c"]]) != row_hashes("", [["a"], ["bc"]])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """(old corpus path, new corpus path, expected counts): rows edited, added and removed."""
    rng = np.random.default_rng(3)
    texts = sample_passages(N + ADDED, seed=21, max_chars=200)
    old = {"doc": [f"d{i:04d}" for i in range(N)], "text": texts[:N]}
    picked = rng.choice(N // 2, EDITED + REMOVED, replace=False)  # the later shards: all unchanged
    edited, removed = set(picked[:EDITED].tolist()), set(picked[EDITED:].tolist())
    new_docs, new_texts = [], []
    for i in range(N):
        if i in removed:
            continue
        new_docs.append(old["doc"][i])
        new_texts.append(old["text"][i] + " (edited)" if i in edited else old["text"][i])
        if i == N // 2:  # one added row in the middle, the rest at the end
            new_docs.append("new-mid")
            new_texts.append(texts[N])
    new_docs += [f"new-{k}" for k in range(1, ADDED)]
    new_texts += texts[N + 1:]
    folder = tmp_path_factory.mktemp("corpora")
    pq.write_table(pa.table(old), folder / "old.parquet", row_group_size=64)
    pq.write_table(pa.table({"doc": new_docs, "text": new_texts}), folder / "new.parquet", row_group_size=64)
    expected = {"reused": N - EDITED - REMOVED, "embedded": EDITED + ADDED, "dropped": EDITED + REMOVED}
    return str(folder / "old.parquet"), str(folder / "new.parquet"), expected


@pytest.fixture(scope="module")
def runs(cluster, corpora, tmp_path_factory):
    """(previous output, full run of the new corpus, reuse run of the new corpus)."""
    old, new, _ = corpora
    base = tmp_path_factory.mktemp("runs")
    pipeline.run(old, output=str(base / "prev"), **RUN)
    full = pipeline.run(new, output=str(base / "full"), **RUN)
    inc = pipeline.run(new, output=str(base / "inc"), reuse=str(base / "prev"), **RUN)
    return base / "prev", full, inc


def _table(folder, **kw):
    return pipeline.read_embeddings(str(folder), **kw)


def test_reuse_equals_full_run(runs, corpora):
    prev, full, inc = runs
    a, b = _table(full.output), _table(inc.output)
    assert b.column_names == a.column_names == ["id", "embedding"]  # the hash only when asked for
    assert b.column("id").to_pylist() == a.column("id").to_pylist()
    va, vb = pipeline.to_numpy(a), pipeline.to_numpy(b)
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() > 1 - 1e-6
    cols = ["id", HASH_COLUMN]
    assert _table(inc.output, columns=cols).equals(_table(full.output, columns=cols))
    parts = [pq.read_schema(p) for d in (full.output, inc.output) for p in sorted(Path(d).glob("part-*"))]
    assert all(s.remove_metadata() == parts[0].remove_metadata() for s in parts)
    assert not (Path(inc.output) / "_reuse_plan.parquet").exists()


def test_unchanged_rows_are_copied_bit_for_bit(runs, corpora):
    prev, _, inc = runs
    old = _table(prev, columns=["embedding", HASH_COLUMN])
    new = _table(inc.output, columns=["embedding", HASH_COLUMN])
    by_hash = {h: i for i, h in enumerate(old.column(HASH_COLUMN).to_pylist())}
    pairs = [(by_hash[h], j) for j, h in enumerate(new.column(HASH_COLUMN).to_pylist()) if h in by_hash]
    assert len(pairs) == corpora[2]["reused"]
    i, j = map(list, zip(*pairs))
    assert np.array_equal(pipeline.to_numpy(old)[i], pipeline.to_numpy(new)[j])


def test_reuse_counts(runs, corpora):
    _, full, inc = runs
    assert inc.manifest["summary"]["reuse"] == corpora[2]
    assert inc.manifest["reuse"]["previous_rows"] == N
    assert inc.stats.rows_total == full.stats.rows_total == N - REMOVED + ADDED
    assert inc.stats.tokens < full.stats.tokens / 5  # only the changed rows went to the engine
    shards = inc.manifest["shards"].values()  # both paths taken: shards all copied, and mixed ones
    assert any(r["reused"] == r["rows"] for r in shards) and any(0 < r["reused"] < r["rows"] for r in shards)


def test_other_settings_refused(runs, corpora, tmp_path):
    prev, _, _ = runs
    with pytest.raises(pipeline.FingerprintMismatch, match=r"output_dtype: 'float32' there, 'float16'"):
        pipeline.run(corpora[1], output=str(tmp_path / "o"), reuse=str(prev), output_dtype="float16", **RUN)
    ignored = pipeline.run(corpora[1], output=str(tmp_path / "i"), reuse=str(prev), output_dtype="float16",
                           reuse_mismatch="ignore", **RUN)
    assert ignored.manifest["summary"]["reuse"] == {"reused": 0, "embedded": N - REMOVED + ADDED, "dropped": 0}
    assert "output_dtype" in ignored.manifest["reuse"]["ignored"][0]
    with pytest.raises(pipeline.InputError, match="output= "):
        pipeline.run(["a"], reuse=str(prev), progress=False)


def test_driver_killed_during_reuse_run_resumes(cluster, runs, corpora, tmp_path):
    prev, _, inc = runs
    out = tmp_path / "out"
    pipeline.shutdown()  # this process's warm actors hold the cluster's CPUs that the CLI's actor needs
    env = {**os.environ, "PIPELINE_CRASH_AT": "mid_run:2", "RAY_ADDRESS": cluster[0]}
    done = subprocess.run([sys.executable, "jobs/embed_corpus.py", "--input", corpora[1], "--output", str(out),
                           "--reuse", str(prev), "--id-column", "doc", "--num-workers", "1",
                           "--shard-rows", str(SHARD_ROWS), "--dtype", "float32", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    manifest = read_manifest(str(out))
    assert len(manifest["shards"]) == 2 and not manifest["complete"]
    resumed = pipeline.run(corpora[1], output=str(out), reuse=str(prev), **RUN)
    assert resumed.stats.resumed_shards == 2
    assert resumed.manifest["summary"]["reuse"] == corpora[2]
    cols = ["id", "embedding", HASH_COLUMN]
    assert _table(out, columns=cols).equals(_table(inc.output, columns=cols))


def test_int8_keeps_the_previous_calibration(cluster, runs, corpora, tmp_path):
    old, new, expected = corpora
    prev = pipeline.run(old, output=str(tmp_path / "prev8"), output_dtype="int8", **RUN)
    inc = pipeline.run(new, output=str(tmp_path / "inc8"), reuse=prev.output, output_dtype="int8", **RUN)
    assert inc.manifest["quantization"] == prev.manifest["quantization"]
    assert inc.manifest["summary"]["reuse"] == expected
    full = pipeline.read_embeddings(str(runs[1].output), as_numpy=True)
    back = pipeline.read_embeddings(inc.output, as_numpy=True, dequantize=True)
    cos = (full * back).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(back, axis=1)
    assert cos.min() > 0.99  # every row, copied or new, decodes with the one calibration


def test_reuse_through_object_storage(cluster, moto, runs, corpora, tmp_path):
    """A run into S3 reusing a local output (the plan is written to and read from S3), then a
    local run reusing that S3 output: both equal the local reuse run."""
    prev, _, inc = runs
    on_s3 = pipeline.run(corpora[1], output=moto.uri("bucket/inc"), reuse=str(prev), **RUN)
    assert on_s3.manifest["summary"]["reuse"] == corpora[2]
    assert not any(k.endswith("_reuse_plan.parquet") for k in moto.objects("bucket/inc"))
    back = pipeline.run(corpora[1], output=str(tmp_path / "back"), reuse=moto.uri("bucket/inc"), **RUN)
    assert back.manifest["summary"]["reuse"] == {"reused": N - REMOVED + ADDED, "embedded": 0, "dropped": 0}
    assert SECRET not in json.dumps({k: v for k, v in back.manifest.items() if k != "shards"})
    cols = ["id", "embedding", HASH_COLUMN]
    want = _table(inc.output, columns=cols)
    assert _table(moto.uri("bucket/inc"), columns=cols).equals(want)
    assert _table(str(tmp_path / "back"), columns=cols).equals(want)


def test_output_without_hashes_refused(cluster, runs, corpora, tmp_path):
    """An output written before content hashes existed cannot be a reuse source: said so."""
    old = tmp_path / "old"
    shutil.copytree(runs[0], old)
    for part in old.glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns([HASH_COLUMN]), part)
    with pytest.raises(pipeline.InputError, match=r"part-.*has no 'content_hash' column"):
        pipeline.run(corpora[1], output=str(tmp_path / "o"), reuse=str(old), **RUN)
