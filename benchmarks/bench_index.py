"""Index benchmark: flat vs hnsw vs ivfpq (faiss) vs lance (IVF-PQ, Lance) over real embeddings of docstring passages.

    python benchmarks/bench_index.py                  # 20,000 indexed + 500 held-back queries
    python benchmarks/bench_index.py --rows 5000 --queries 200

Embeds `rows + queries` distinct passages from pipeline/inputs/samples.py once with the bundled model
(cached under out/bench_index/; the queries are passages not in the index), builds each index
kind in a fresh subprocess (build seconds, peak RSS over the process's start, index bytes), and
prints recall@k of hnsw/ivfpq against the exact flat index, and query latency.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import machine

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "out" / "bench_index"
KINDS = ("flat", "hnsw", "ivfpq", "lance")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_index.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="indexed passages (default: 20,000)")
    p.add_argument("--queries", type=int, default=500, help="held-back query passages (default: 500)")
    p.add_argument("-k", type=int, default=10, help="recall@k (default: 10)")
    p.add_argument("--max-chars", type=int, default=1000, help="passage length cap (default: 1000)")
    p.add_argument("--threads", type=int, default=None,
                   help="faiss threads for builds and searches (default: one per core)")
    p.add_argument("--build-one", default=None, help=argparse.SUPPRESS)  # child mode: one kind
    return p.parse_args(argv)


def embed_once(rows: int, queries: int, max_chars: int) -> tuple[Path, np.ndarray]:
    """(embeddings folder of the corpus, float32 query vectors), computed once and cached."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pipeline
    from benchlib import sample_passages
    folder = CACHE / f"r{rows}-q{queries}-c{max_chars}"
    out, qfile = folder / "embeddings", folder / "queries.npy"
    if (out / "_manifest.json").exists() and qfile.exists():
        return out, np.load(qfile)
    folder.mkdir(parents=True, exist_ok=True)
    texts = sample_passages(rows + queries, seed=0, max_chars=max_chars)
    pq.write_table(pa.table({"id": [f"p{i:06d}" for i in range(rows)], "text": texts[:rows]}),
                   folder / "corpus.parquet", row_group_size=1000)
    import ray
    ray.init(include_dashboard=False, log_to_driver=False)  # one local Ray for both runs
    try:
        pipeline.run(str(folder / "corpus.parquet"), output=out, id_column="id", overwrite=True)
        vectors = pipeline.run(texts[rows:], progress=False).embeddings
    finally:
        ray.shutdown()
    np.save(qfile, vectors)
    return out, vectors


def build_one(kind: str, embeddings: Path, index: Path, threads: int | None) -> dict:
    """Child mode: build one index in this fresh process. RSS delta = peak RSS of the build minus
    the peak of a warm-up that first streams every part once (imports, Arrow's allocator), so it
    counts what the index and its training add on top of reading."""
    from pipeline.index import Corpus, build, import_faiss
    for _, vectors in Corpus.open(embeddings).parts():
        warm = import_faiss().IndexFlatIP(vectors.shape[1])
        warm.add(vectors[:100])
    del vectors, warm
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = build(embeddings, index, kind, threads=threads)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats["rss_delta_mib"], stats["rss_peak_mib"] = (peak - base) / 1024, peak / 1024
    return stats


def recall(got: list[list[tuple]], want: list[list[tuple]], k: int) -> float:
    return float(np.mean([len({h[2] for h in g[:k]} & {h[2] for h in w[:k]}) / k for g, w in zip(got, want)]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_one:
        kind, emb, index = args.build_one.split(",")
        print(json.dumps(build_one(kind, Path(emb), Path(index), args.threads)))
        return 0
    from pipeline.index import Index, import_faiss
    if args.threads:
        import_faiss().omp_set_num_threads(args.threads)
    embeddings, queries = embed_once(args.rows, args.queries, args.max_chars)
    rows, results = [], {}
    for kind in KINDS:
        index_path = CACHE / "indexes" / f"{kind}.{'lance' if kind == 'lance' else 'faiss'}"
        child = subprocess.run([sys.executable, __file__, "--build-one", f"{kind},{embeddings},{index_path}",
                                "--threads", str(args.threads or 0)],
                               capture_output=True, text=True, check=True)
        stats = json.loads(child.stdout.strip().splitlines()[-1])
        index = Index.load(index_path)
        t0 = time.perf_counter()
        results[kind] = index.search(queries, args.k)
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        rows.append((kind, stats, ms))
    print(f"\nmachine: {machine()}")
    print(f"\n{args.rows:,} vectors x {stats['dimensions']} ({embeddings}), {len(queries)} held-back "
          f"queries, recall@{args.k} vs flat\n")
    print(f"| kind | params | build s | RSS delta MiB | peak RSS MiB | index bytes | recall@{args.k} | ms/query |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, s, ms in rows:
        params = " ".join(f"{k}={v}" for k, v in s["params"].items()) or (f"M={s['hnsw_m']}" if s["hnsw_m"] else "-")
        print(f"| {kind} | {params} | {s['seconds']:.2f} | {s['rss_delta_mib']:.0f} | {s['rss_peak_mib']:.0f} | {s['index_bytes']:,} | "
              f"{recall(results[kind], results['flat'], args.k):.3f} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
