"""The finish step's duplicate-id pass at R rows, before and after DuckDB (issue 26, docs/SCALE.md).

    python benchmarks/bench_duplicates.py                       # 1e6 and 1e7 rows, 2 repeats
    python benchmarks/bench_duplicates.py --rows 1000000 --repeats 1

R rows of 16-character string ids in 20,000-row parts (the `id` column only: the pass reads
nothing else), 1 id in 1,000 repeating an earlier one, through `finish.output_errors` of
  - "old, 1 bucket" / "old, 5 buckets": the hand-written pass this replaced (all ids in memory,
    or spilled by hash into 5 bucket files first), loaded from git commit OLD_COMMIT's
    pipeline/output/finish.py (so it needs the repository's history; nothing of it is kept in
    the package);
  - "duckdb 2GB" / "duckdb 256MB": today's pass, DuckDB's memory_limit at its default and at
    256 MB (spilling).
Each measurement runs in its own process (peak RSS is per process), variants interleaved and
repeated, so a load change on a shared machine hits all of them alike. Reported per run: time,
peak RSS, peak size of the spill folder (polled every 20 ms), and the duplicate rows found
(equal across variants, or the script fails). The best of the repeats is the summary.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import ROOT, machine

OLD_COMMIT = "4b78387"  # main before the DuckDB pass: finish.py with _IdBuckets
PART_ROWS = 20_000
VARIANTS = {"old, 1 bucket": ("old", 1), "old, 5 buckets": ("old", 5),
            "duckdb 2GB": ("duckdb", "2GB"), "duckdb 256MB": ("duckdb", "256MB")}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def old_finish():
    """The pre-DuckDB finish module, from git, imported as pipeline.output._finish_old."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:pipeline/output/finish.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-old-finish-")) / "finish_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pipeline.output._finish_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_parts(folder, rows: int):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.output.manifest import Manifest
    manifest = Manifest.new(folder, {"id_column": "doc"}, {})
    for k, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        index = np.arange(start, start + n)
        index[::1000] = np.maximum(index[::1000] - 500, 0)  # 1 in 1,000 repeats an earlier id
        ids = pc.utf8_lpad(pa.array(index).cast(pa.string()), 16, "0")
        path = f"part-{k:06d}-000000000000.parquet"
        pq.write_table(pa.table({"id": ids}), folder.file(path))
        manifest.commit(f"{k:06d}", {"path": path, "rows": n, "row_offset": start, "input_rows": n})
    return manifest


def measure(rows: int, variant: str) -> dict:
    import pipeline.output  # noqa: F401  (the package the old module's relative imports need)
    from pipeline.output import finish
    from pipeline.output.output_folder import OutputFolder
    engine, setting = VARIANTS[variant]
    module = old_finish() if engine == "old" else finish
    with tempfile.TemporaryDirectory(prefix="bench-ids-") as tmp:
        folder = OutputFolder.open(f"{tmp}/out")
        folder.create()
        manifest = write_parts(folder, rows)
        parts_mb = sum(p.stat().st_size for p in Path(folder.path).glob("part-*")) / 2**20
        spill_dir = Path(tmp) / "spill"
        spill_dir.mkdir()
        tempfile.tempdir = str(spill_dir)  # both passes spill under tempfile's folder
        peak, done = {"bytes": 0}, threading.Event()

        def poll():
            while not done.is_set():
                size = sum(p.stat().st_size for p in spill_dir.rglob("*") if p.is_file())
                peak["bytes"] = max(peak["bytes"], size)
                time.sleep(0.02)
        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        rss0, stats = _rss_mb(), {}
        t0 = time.perf_counter()
        if engine == "old":
            table, _, duplicates = module.output_errors(folder, manifest, pass_rows=-(-rows // setting))
        else:
            table, _, duplicates = module.output_errors(folder, manifest, memory_limit=setting, stats=stats)
        seconds = time.perf_counter() - t0
        done.set()
        watcher.join()
    return {"rows": rows, "variant": variant, "seconds": seconds, "duplicate_rows": duplicates,
            "rss_before_mb": rss0, "rss_peak_mb": _rss_mb(), "spill_peak_mb": peak["bytes"] / 2**20,
            "duckdb_spilled_mb": stats.get("spilled_bytes", 0) / 2**20,
            "duckdb_peak_memory_mb": stats.get("peak_memory_bytes", 0) / 2**20, "parts_mb": parts_mb}


def _child(rows: int, variant: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, __file__, "--one", str(rows), variant], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant (default: 2)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1])))
        return
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at start\n")
    print("| rows | variant | run | seconds | s per 1e6 rows | peak RSS MB | RSS before MB | spill peak MB "
          "| DuckDB peak memory MB | duplicates | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    best = {}
    for rows in args.rows:
        found = set()
        for run in range(args.repeats):
            for variant in args.variants:
                r = _child(rows, variant)
                found.add(r["duplicate_rows"])
                key = (rows, variant)
                best[key] = min(best.get(key, float("inf")), r["seconds"])
                print(f"| {rows:,} | {variant} | {run + 1} | {r['seconds']:.2f} | {r['seconds'] / rows * 1e6:.2f} | "
                      f"{r['rss_peak_mb']:.0f} | {r['rss_before_mb']:.0f} | {r['spill_peak_mb']:.0f} | "
                      f"{r['duckdb_peak_memory_mb']:.0f} | {r['duplicate_rows']:,} | {os.getloadavg()[0]:.1f} |",
                      flush=True)
        assert len(found) == 1, f"variants disagree on the duplicate rows: {found}"
    print("\nBest of the repeats, and the speed-up of DuckDB (2GB / 256MB) over the old passes:\n")
    print("| rows | " + " | ".join(args.variants) + " | 2GB vs old 1 bucket | 2GB vs old 5 buckets "
          "| 256MB vs old 5 buckets |")
    print("|---|" + "---|" * (len(args.variants) + 3))
    for rows in args.rows:
        b = {v: best[(rows, v)] for v in args.variants}
        ratio = lambda a, c: f"{b[a] / b[c]:.1f}x" if a in b and c in b else "-"  # noqa: E731
        print(f"| {rows:,} | " + " | ".join(f"{b[v]:.2f} s" for v in args.variants) + " | "
              f"{ratio('old, 1 bucket', 'duckdb 2GB')} | {ratio('old, 5 buckets', 'duckdb 2GB')} | "
              f"{ratio('old, 5 buckets', 'duckdb 256MB')} |")


if __name__ == "__main__":
    main()
