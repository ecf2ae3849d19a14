"""Benchmark: end-to-end `pipeline.run` against the bare engine on the same texts, in one run.

    python benchmarks/bench_pipeline.py                      # 20,000 docstring passages, default model
    python benchmarks/bench_pipeline.py --rows 25000 --workers 1 2

The bare engine embeds the texts in this process with every core; then `pipeline.run` reads the
same texts from a Parquet file, embeds them in Ray actors and writes Parquet parts. The pipeline
is timed end to end (Ray start, actor and model start, reads, writes, commits) and also without
its start-up. Prints a table with tokens/s and the ratio to the bare engine (issue 3: >= 85%).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rows", type=int, default=20_000, help="passages to embed (default: 20,000)")
    p.add_argument("--seed", type=int, default=0, help="sample_passages seed (default: 0)")
    p.add_argument("--workers", type=int, nargs="+", default=[1],
                   help="pipeline worker counts to measure; the cores are split evenly (default: 1)")
    p.add_argument("--dtype", default="auto", help="engine compute dtype for both (default: auto)")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "pipeline"), help="scratch folder (emptied)")
    p.add_argument("--json", default=None, help="also write the rows of the table to this JSON file")
    return p.parse_args(argv)


def bare_engine(texts: list[str], dtype: str, threads: int) -> dict:
    """The engine alone, in this process: model load excluded, one warm-up call."""
    from workers import Engine, EngineConfig
    engine = Engine(EngineConfig(dtype=dtype, num_threads=threads))
    engine.embed(texts[:64])
    tokens0 = engine.stats.tokens
    t0 = time.perf_counter()
    engine.embed(texts)
    seconds = time.perf_counter() - t0
    tokens = engine.stats.tokens - tokens0
    del engine
    gc.collect()
    return {"variant": f"bare Engine.embed ({threads} threads)", "rows": len(texts),
            "tokens": tokens, "seconds": seconds}


def pipeline_run(corpus: Path, out: Path, dtype: str, workers: int) -> list[dict]:
    import pipeline
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = pipeline.run(str(corpus), output=str(out), num_workers=workers, dtype=dtype, progress=False)
    wall = time.perf_counter() - t0
    s = result.stats
    shards = result.manifest["shards"].values()
    io = {k: sum(r.get(k, 0.0) for r in shards) for k in ("read_seconds", "embed_seconds", "write_seconds")}
    name = f"pipeline.run, {workers} worker(s), Parquet in/out"
    return [
        {"variant": f"{name}, end to end", "rows": s.rows, "tokens": s.tokens, "seconds": wall, **io},
        {"variant": f"{name}, without start-up ({s.startup_seconds:.1f} s)", "rows": s.rows,
         "tokens": s.tokens, "seconds": wall - s.startup_seconds},
    ]


def print_table(rows: list[dict]) -> None:
    base = rows[0]["tokens"] / rows[0]["seconds"]
    print(f"\n| variant | rows | tokens | seconds | tokens/s | vs bare engine |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r["tokens"] / r["seconds"]
        r["tokens_per_s"], r["ratio"] = rate, rate / base
        print(f"| {r['variant']} | {r['rows']:,} | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{rate:,.0f} | {100 * rate / base:.1f}% |")
    for r in rows:
        if "read_seconds" in r:
            print(f"\n{r['variant']}: actor time summed over shards: read {r['read_seconds']:.2f} s, "
                  f"embed {r['embed_seconds']:.1f} s, write {r['write_seconds']:.2f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from benchlib import machine, sample_passages
    cores = os.cpu_count() or 1
    texts = sample_passages(args.rows, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.parquet"
    pq.write_table(pa.table({"text": texts}), corpus, row_group_size=2048)
    print(f"{len(texts):,} passages, {machine()}, dtype={args.dtype}", flush=True)
    rows = [bare_engine(texts, args.dtype, cores)]
    print(f"bare engine: {rows[0]['tokens'] / rows[0]['seconds']:,.0f} tokens/s", flush=True)
    for workers in args.workers:
        rows += pipeline_run(corpus, out / f"emb-{workers}", args.dtype, workers)
        print(f"pipeline ({workers} workers): {rows[-2]['tokens'] / rows[-2]['seconds']:,.0f} tokens/s", flush=True)
    if rows[1]["tokens"] != rows[0]["tokens"]:
        print(f"warning: token counts differ: bare {rows[0]['tokens']:,}, pipeline {rows[1]['tokens']:,}")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
