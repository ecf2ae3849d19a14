"""The Lance index (kind="lance") at 10^6 synthetic vectors: build time, memory, size, recall.

    python benchmarks/bench_lance_scale.py                      # 1e6 x 384, 200 held-out queries
    python benchmarks/bench_lance_scale.py --rows 100000 --dim 384

Writes a finished synthetic output folder (unit vectors around 1,000 centres, float32, 20,000-row
Parquet parts: what `pipeline.run` writes, without the engine), then in a fresh process builds
the Lance index from it with the default parameters (`pipeline.index.build(..., kind="lance")`),
reporting: write and index seconds, peak RSS over the process's start (after the imports), the
dataset's and the index's bytes on disk, recall@10 of held-out queries against exact search
(numpy over all vectors) and ms per query (batched). The folders live under --work (default
out/bench_lance, ~3.5 GB at 1e6 x 384; removed with --clean). Recall on real MiniLM vectors is
benchmarks/bench_index.py's (the synthetic clusters only stand in for size and time).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import ROOT, machine

PART_ROWS = 20_000


def vectors(start: int, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows start..start+n of the synthetic corpus (deterministic per row block)."""
    centres = np.random.default_rng(seed).standard_normal((1000, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1 + start)
    x = centres[rng.integers(0, 1000, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_output(path: Path, rows: int, dim: int) -> float:
    import pyarrow as pa

    from pipeline.output.manifest import Manifest
    from pipeline.output.output_folder import OutputFolder
    from pipeline.output.writer import part_table
    t0 = time.perf_counter()
    folder = OutputFolder.open(path)
    folder.create()
    manifest = Manifest.new(folder, {"id_column": "doc", "output_dtype": "float32",
                                     "engine": {"task": "embed", "dimensions": dim, "normalize": True}}, {})
    for k, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        ids = pa.array([f"doc-{i:012d}" for i in range(start, start + n)])
        record = folder.publish_part(f"{k:06d}", part_table(ids, vectors(start, n, dim), None, "float32", {}), "parquet")
        manifest.commit(f"{k:06d}", {**record, "row_offset": start, "input_rows": n})
    manifest.finish({})
    manifest.save(force=True)
    return time.perf_counter() - t0


def build_child(emb: str, index: str) -> dict:
    import lance  # noqa: F401  (imports before the baseline)

    from pipeline.index import build
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = build(emb, index, kind="lance")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**stats, "rss_base_mib": base / 1024, "rss_peak_mib": peak / 1024}


def dir_bytes(path: Path, sub: str = "") -> int:
    root = path / sub if sub else path
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default=str(ROOT / "out" / "bench_lance"))
    ap.add_argument("--clean", action="store_true", help="remove the work folder at the end")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[],
                    help="also report recall@10 and ms/query at these nprobes (default: the index's only)")
    ap.add_argument("--reuse", action="store_true",
                    help="search an index already built under --work (no build figures)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(build_child(*args.child)))
        return
    work = Path(args.work) / f"r{args.rows}-d{args.dim}"
    emb, index = work / "embeddings", work / "index.lance"
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at start")
    if not (emb / "_manifest.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        print(f"wrote the synthetic output in {write_output(emb, args.rows, args.dim):.0f} s", flush=True)
    from pipeline.index import Index
    queries = vectors(10**12, args.queries, args.dim, seed=0)  # same centres, rows never indexed
    scores = np.full((args.queries, args.rows), -np.inf, np.float32)
    for start in range(0, args.rows, PART_ROWS):
        scores[:, start:start + PART_ROWS] = queries @ vectors(start, min(PART_ROWS, args.rows - start), args.dim).T
    exact = np.argsort(-scores, axis=1)[:, :10]
    del scores

    def measure(nprobe=None) -> tuple[float, float]:
        t0 = time.perf_counter()
        got = Index.load(index).search(queries, 10, nprobe)
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        return float(np.mean([len({h[2] for h in g} & set(e.tolist())) / 10 for g, e in zip(got, exact)])), ms
    if args.reuse:
        for n in args.nprobes or [None]:
            recall, ms = measure(n)
            print(f"nprobes {n or 'default'}: recall@10 {recall:.3f}, {ms:.1f} ms/query")
        return
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, __file__, "--child", str(emb), str(index)], env=env,
                          capture_output=True, text=True, check=True)
    s = json.loads(done.stdout.strip().splitlines()[-1])
    recall, ms = measure()
    total, idx = dir_bytes(index), dir_bytes(index, "_indices")
    parts = dir_bytes(emb)
    p = s["params"]
    print(f"\n| vectors | dim | partitions | sub-vectors | nprobes | refine | write s | index s | peak RSS MiB "
          f"(after imports) | dataset GB | index MB | bytes/vector (index) | parts GB | recall@10 | ms/query |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.rows:,} | {args.dim} | {p['num_partitions']} | {p['num_sub_vectors']} | {p['nprobes']} | "
          f"{p['refine_factor']} | {s['write_seconds']:.0f} | {s['seconds'] - s['write_seconds']:.0f} | "
          f"{s['rss_peak_mib']:.0f} ({s['rss_peak_mib'] - s['rss_base_mib']:.0f} over {s['rss_base_mib']:.0f}) | "
          f"{total / 1e9:.2f} | {idx / 1e6:.0f} | {idx / args.rows:.0f} | {parts / 1e9:.2f} | {recall:.3f} | {ms:.1f} |")
    scale = 1e9 / args.rows
    print(f"\nLinear in rows, to 1e9 x {args.dim} on one such node (an estimate; IVF assignment grows "
          f"with the partitions too): write {s['write_seconds'] * scale / 3600:.1f} h, index "
          f"{(s['seconds'] - s['write_seconds']) * scale / 3600:.1f} h, dataset {total * scale / 1e12:.2f} TB, "
          f"index {idx * scale / 1e9:.0f} GB")
    for n in args.nprobes:
        r, m = measure(n)
        print(f"nprobes {n}: recall@10 {r:.3f}, {m:.1f} ms/query")
    if args.clean:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
