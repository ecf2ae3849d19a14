"""Incremental runs (issue 27): wall time of a `reuse=` run vs a full run of the same corpus.

    python benchmarks/bench_reuse.py                       # 20,000 rows, 2% edited, 1% added, 1% removed
    python benchmarks/bench_reuse.py --rows 2000           # smoke

A corpus of sample passages (pipeline/inputs/samples.py, up to 400 characters) is embedded once
(the previous output); then the same corpus with --edited rows changed, --added rows new and
--removed rows gone is embedded twice into new folders, alternately: in full, and with
reuse= the previous output. Same process, same warm actor (bundled all-MiniLM-L6-v2, float32,
one worker with every core), a warm-up run first, so both sides time the same machinery: plan,
dispatch, read, embed or copy, write, commit, finish. Reported: the median wall time of
--rounds rounds of each, their ratio, and the reuse counts.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import benchlib


def corpora(rows: int, edited: float, added: float, removed: float, folder: Path) -> tuple[str, str]:
    n_add = int(rows * added)
    texts = benchlib.sample_passages(rows + n_add, seed=1, max_chars=400)
    rng = np.random.default_rng(0)
    picked = rng.choice(rows, int(rows * edited) + int(rows * removed), replace=False)
    n_edit = int(rows * edited)
    edits, gone = set(picked[:n_edit].tolist()), set(picked[n_edit:].tolist())
    docs = [f"d{i:07d}" for i in range(rows)]
    new = [(d, t + " (edited)" if i in edits else t) for i, (d, t) in enumerate(zip(docs, texts)) if i not in gone]
    new += [(f"n{k:07d}", t) for k, t in enumerate(texts[rows:])]
    pq.write_table(pa.table({"doc": docs, "text": texts[:rows]}), folder / "old.parquet")
    pq.write_table(pa.table({"doc": [d for d, _ in new], "text": [t for _, t in new]}), folder / "new.parquet")
    return str(folder / "old.parquet"), str(folder / "new.parquet")


def main() -> None:
    p = benchlib.parser("bench_reuse.py", __doc__)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--edited", type=float, default=0.02)
    p.add_argument("--added", type=float, default=0.01)
    p.add_argument("--removed", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import pipeline
    run = {"id_column": "doc", "num_workers": 1, "dtype": "float32", "progress": False}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old, new = corpora(args.rows, args.edited, args.added, args.removed, tmp)
        warm = pa.table({"doc": [f"w{i}" for i in range(64)], "text": ["warm-up"] * 64})
        pipeline.run(warm, output=str(tmp / "warm"), in_process_rows=0, **run)
        pipeline.run(old, output=str(tmp / "prev"), **run)
        times = {"full": [], "reuse": []}
        counts = None
        for r in range(args.rounds):
            for side in ("full", "reuse"):
                out = tmp / f"{side}{r}"
                t0 = time.perf_counter()
                result = pipeline.run(new, output=str(out), **run,
                                      **({"reuse": str(tmp / "prev")} if side == "reuse" else {}))
                times[side].append(time.perf_counter() - t0)
                if side == "reuse":
                    counts = result.manifest["summary"]["reuse"]
                shutil.rmtree(out)
        pipeline.shutdown()
    full, reuse = statistics.median(times["full"]), statistics.median(times["reuse"])
    print(f"machine: {benchlib.machine()}")
    print(f"rows {args.rows}; changes: {args.edited:.0%} edited, {args.added:.0%} added, {args.removed:.0%} removed")
    print("| run | wall s (median of %d) | all |" % args.rounds)
    print("|---|---|---|")
    print(f"| full | {full:.1f} | {', '.join(f'{t:.1f}' for t in times['full'])} |")
    print(f"| reuse | {reuse:.1f} | {', '.join(f'{t:.1f}' for t in times['reuse'])} |")
    print(f"reuse / full = {reuse / full:.3f}; counts {counts}")


if __name__ == "__main__":
    main()
