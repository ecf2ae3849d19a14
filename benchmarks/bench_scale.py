"""What the driver pays at corpus scale (issue 15 item 8; docs/SCALE.md quotes the tables).

    python benchmarks/bench_scale.py                        # plan + manifest at 1e5, 1e6 shards
    python benchmarks/bench_scale.py --shards 100000

1. The plan and the manifest for N shards, synthetic: `plan_shards` over N/10 fragments of 10
   shards each, then a `Manifest` with N committed records shaped like a real run's (path,
   sha256, rows, tokens, per-stage seconds, ...), saved and loaded through the real
   `OutputFolder` (JSON, redaction, atomic replace) in a temporary folder. Reported: time, the
   Python heap peak (tracemalloc) and the process's peak RSS, the manifest's size on disk.
2. The duplicate-id pass of the finish step: benchmarks/bench_duplicates.py (old vs DuckDB).

Each measurement runs in its own process (peak RSS is per process). Times are wall clock on
whatever else the machine runs: say so next to any figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

from benchlib import ROOT, machine

SHARD_ROWS = 1000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_plan_and_manifest(n: int, save: int = 1) -> dict:
    from pipeline.output.manifest import Manifest
    from pipeline.output.output_folder import OutputFolder
    from pipeline.inputs.shards import plan_shards
    from pipeline.inputs.sources import Fragment
    out = {"shards": n, "rss_start_mb": _rss_mb()}
    fragments = [Fragment(f"s3://bucket/corpus/part-{i:07d}.parquet", 10 * SHARD_ROWS) for i in range(n // 10)]
    tracemalloc.start()
    t0 = time.perf_counter()
    shards = plan_shards(fragments, SHARD_ROWS)
    out["plan_s"] = time.perf_counter() - t0
    out["plan_heap_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.reset_peak()
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        folder = OutputFolder.open(tmp)
        manifest = Manifest.new(folder, {"engine": {"model": "m", "model_hash": "0" * 16}},
                                {"num_shards": n, "shard_rows": SHARD_ROWS})
        t0 = time.perf_counter()
        for s in shards:
            manifest.commit(s.id, _record(s))
        out["commit_s"] = time.perf_counter() - t0
        out["manifest_heap_mb"] = tracemalloc.get_traced_memory()[0] / 2**20 - out["plan_heap_mb"]
        tracemalloc.stop()
        t0 = time.perf_counter()
        body = json.dumps(manifest.data, indent=1, sort_keys=True)  # what Manifest.save encodes
        out["dumps_s"], out["manifest_mb"] = time.perf_counter() - t0, len(body) / 2**20
        del body
        t0 = time.perf_counter()
        compact = json.dumps(manifest.data, separators=(",", ":"), sort_keys=True)  # C encoder
        out["dumps_compact_s"], out["compact_mb"] = time.perf_counter() - t0, len(compact) / 2**20
        del compact
        out["save_s"] = out["load_s"] = float("nan")
        if save:  # the whole save (encode, redact, atomic publish) and a resume's load
            t0 = time.perf_counter()
            manifest.save(force=True)
            out["save_s"] = time.perf_counter() - t0
            del manifest
            t0 = time.perf_counter()
            Manifest.load(folder)
            out["load_s"] = time.perf_counter() - t0
    out["rss_peak_mb"] = _rss_mb()
    return out


def _record(shard) -> dict:
    """A committed shard's record as `driver._Collector.done` writes it (typical values)."""
    stages = {k: 0.123456789 for k in ("tokenize", "build", "copy_in", "forward", "copy_out", "idle")}
    return {"path": f"part-{shard.id}-0123456789ab.parquet", "rows": shard.num_rows,
            "bytes": 1_640_000, "sha256": "f" * 64, "tokens": 61_234, "truncated": 3, "chunked": 0,
            "bad_rows": 0, "embed_seconds": 12.3456789, "read_seconds": 0.1234567,
            "write_seconds": 0.0456789, "stages": stages, "row_offset": shard.row_offset,
            "input_rows": shard.num_rows, "worker": 7}


def _child(kind: str, *args: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, __file__, "--one", kind, *map(str, args)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[100_000, 1_000_000],
                    help="plan + manifest sizes (shards)")
    ap.add_argument("--save-max", type=int, default=200_000,
                    help="time the manifest's full save and load only up to this many shards")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    if args.one:
        kind, *nums = args.one
        fn = {"plan": measure_plan_and_manifest}[kind]
        print(json.dumps(fn(*map(int, nums))))
        return
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at start (shared machine)\n")
    print("| shards | plan s | plan heap MB | commit s | manifest heap MB | manifest MB | encode s "
          "(indent=1) | compact MB | encode s (compact) | full save s | load s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.shards:
        r = _child("plan", n, int(n <= args.save_max))
        print(f"| {n:,} | {r['plan_s']:.2f} | {r['plan_heap_mb']:.0f} | {r['commit_s']:.2f} | "
              f"{r['manifest_heap_mb']:.0f} | {r['manifest_mb']:.0f} | {r['dumps_s']:.2f} | "
              f"{r['compact_mb']:.0f} | {r['dumps_compact_s']:.2f} | {r['save_s']:.2f} | "
              f"{r['load_s']:.2f} | {r['rss_peak_mb']:.0f} |", flush=True)

if __name__ == "__main__":
    main()
