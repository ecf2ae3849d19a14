"""What the driver pays at corpus scale (issue 15 item 8; docs/SCALE.md quotes the tables).

    python benchmarks/bench_scale.py                        # plan + commit log at 1e3..1e6 shards
    python benchmarks/bench_scale.py --shards 100000

1. The plan and the manifest for N shards, synthetic: a `ShardPlan` over N/10 fragments of 10
   shards each, then N commits of records shaped like a real run's (path, sha256, rows,
   tokens, per-stage seconds, ...) through the real `Manifest` (commit log, folds into
   segments, `OutputFolder`), each commit timed, then a resume's load. Reported: times, the
   plan's Python heap (tracemalloc), the manifest's Arrow memory and RSS growth, files' size.
2. The duplicate-id pass of the finish step: benchmarks/bench_duplicates.py (old vs DuckDB).
3. A driver SIGKILLed and resumed 20 times in a 10**5-shard run: benchmarks/bench_kill.py.

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
from pathlib import Path

from benchlib import ROOT, machine

SHARD_ROWS = 1000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_plan_and_manifest(n: int, save: int = 1) -> dict:
    """The compact plan and the commit log (manifest version 2) for n shards: plan time and
    memory, every commit timed (the log's append, its folds into segments), the manifest's
    memory, and a resume's load. `save`: 1 = the folder on local disk (each commit fsynced),
    0 = on /dev/shm (fsync free: the CPU cost alone, for sizes whose fsyncs would take long)."""
    import gc

    import numpy as np
    import pyarrow as pa

    from pipeline.inputs.shards import ShardPlan
    from pipeline.inputs.sources import Fragment
    from pipeline.output.manifest import Manifest
    from pipeline.output.output_folder import OutputFolder
    out = {"shards": n, "disk": "local disk" if save else "/dev/shm", "rss_start_mb": _rss_mb()}
    fragments = [Fragment(f"s3://bucket/corpus/part-{i:07d}.parquet", 10 * SHARD_ROWS) for i in range(n // 10)]
    tracemalloc.start()
    t0 = time.perf_counter()
    plan = ShardPlan(fragments, SHARD_ROWS)
    todo = plan.subset(np.arange(len(plan)))
    out["plan_s"] = time.perf_counter() - t0
    out["plan_heap_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()  # it would slow the commits down; their memory is measured below
    with tempfile.TemporaryDirectory(prefix="bench-manifest-", dir=None if save else "/dev/shm") as tmp:
        folder = OutputFolder.open(tmp)
        manifest = Manifest.new(folder, {"engine": {"model": "m", "model_hash": "0" * 16}},
                                {"num_shards": n, "shard_rows": SHARD_ROWS})
        manifest.save(force=True)
        arrow0, rss0 = pa.total_allocated_bytes(), _rss_now_mb()
        took = np.empty(n)
        t0 = time.perf_counter()
        for k, shard in enumerate(todo):
            t1 = time.perf_counter()
            manifest.commit(shard.id, _record(shard))
            took[k] = time.perf_counter() - t1
        out["commit_s"] = time.perf_counter() - t0
        tenth = max(1, n // 10)
        out["commit_us"] = took.mean() * 1e6
        out["commit_first_us"], out["commit_last_us"] = took[:tenth].mean() * 1e6, took[-tenth:].mean() * 1e6
        out["commit_p99_us"], out["commit_max_ms"] = np.percentile(took, 99) * 1e6, took.max() * 1e3
        out["arrow_mb"] = (pa.total_allocated_bytes() - arrow0) / 2**20
        out["manifest_rss_mb"] = _rss_now_mb() - rss0
        out["segments"] = len(manifest.commits.segments)
        out["tail"] = len(manifest.commits.tail)
        out["files_mb"] = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
        out["manifest_json_kb"] = (Path(tmp) / "_manifest.json").stat().st_size / 1024
        del manifest, took
        gc.collect()
        t0 = time.perf_counter()
        loaded = Manifest.load(folder)  # a resume: segments + the log's tail
        out["load_s"] = time.perf_counter() - t0
        assert len(loaded.shards) == n
        t0 = time.perf_counter()
        loaded.fold()  # and the resume's first step: the tail into a segment, a new log
        out["resume_fold_s"] = time.perf_counter() - t0
    out["rss_peak_mb"] = _rss_mb()
    return out


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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
    ap.add_argument("--shards", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000],
                    help="plan + commit log sizes (shards)")
    ap.add_argument("--save-max", type=int, default=10_000,
                    help="up to this many shards the output folder is on local disk (each commit "
                         "fsynced); above, on /dev/shm (the commits' CPU cost alone)")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    if args.one:
        kind, *nums = args.one
        fn = {"plan": measure_plan_and_manifest}[kind]
        print(json.dumps(fn(*map(int, nums))))
        return
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at start (shared machine)\n")
    print("| shards | folder | plan s | plan heap MB | commit s (all) | µs per commit (mean, first 10 %, "
          "last 10 %, p99) | slowest commit ms | Arrow MB | RSS growth MB | segments | commit files MB "
          "| _manifest.json KB | load s | resume fold s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.shards:
        r = _child("plan", n, int(n <= args.save_max))
        print(f"| {n:,} | {r['disk']} | {r['plan_s']:.3f} | {r['plan_heap_mb']:.1f} | {r['commit_s']:.1f} | "
              f"{r['commit_us']:.0f}, {r['commit_first_us']:.0f}, {r['commit_last_us']:.0f}, "
              f"{r['commit_p99_us']:.0f} | {r['commit_max_ms']:.0f} | {r['arrow_mb']:.1f} | "
              f"{r['manifest_rss_mb']:.0f} | {r['segments']} | {r['files_mb']:.1f} | "
              f"{r['manifest_json_kb']:.1f} | {r['load_s']:.2f} | {r['resume_fold_s']:.2f} | "
              f"{r['rss_peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
