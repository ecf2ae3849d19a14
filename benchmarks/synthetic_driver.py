"""The synthetic driver that benchmarks/bench_kill.py SIGKILLs and resumes: no model, no Ray, the
pipeline's own planning and commit-log code.

    python benchmarks/synthetic_driver.py OUTPUT SHARDS GAP_S [--redo]

It plans SHARDS shards (`ShardPlan`: 1,000-row shards, 10 per fragment), resumes as
`driver._prepare_output` does (load the manifest, check fingerprint and plan, delete strays, fold
the log, save), commits every shard not yet committed through `Manifest.commit` with a record
shaped like a real run's (the log folds every 4,096 records, or PIPELINE_FOLD_EVERY), and prints
each shard once acknowledged: its `commit` returned (object stores: its batch object was
written), i.e. durable by contract. First it prints `R <load s> <start-up s> <committed>`, last
`D`. GAP_S > 0: it sleeps that long before each commit and calls `Manifest.tick`, as a driver
waiting for its workers does. No part files are written (the resume's check that each committed
part still exists is left out). `--redo` commits every shard again: a broken resume, for a test
that the benchmark's checks fail.
"""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD_ROWS = 1000
FINGERPRINT = {"engine": {"model": "synthetic", "model_hash": "0" * 16}}


def pipeline_output_only() -> None:
    """Import pipeline.output and pipeline.inputs.shards without the package's __init__ (it
    imports the engine: seconds of start-up per resume)."""
    if "pipeline" not in sys.modules:
        package = types.ModuleType("pipeline")
        package.__path__ = [str(ROOT / "pipeline")]
        sys.modules["pipeline"] = package


def plan(n: int):
    """The shard plan of n shards and its manifest record."""
    from pipeline.inputs.shards import ShardPlan
    from pipeline.inputs.sources import Fragment
    fragments = [Fragment(f"s3://bucket/corpus/part-{i:07d}.parquet", 10 * SHARD_ROWS)
                 for i in range(-(-n // 10))]  # 10 shards per fragment
    shards = ShardPlan(fragments, SHARD_ROWS)
    return shards, {"source": "synthetic", "num_rows": shards.num_rows, "num_fragments": len(fragments),
                    "input_digest": "0" * 16, "num_shards": len(shards), "shard_rows": SHARD_ROWS}


def record(shard) -> dict:
    """A committed shard's record as `driver._Collector.done` writes it, distinct per shard."""
    k = shard.index
    r = {"path": f"part-{shard.id}-{k:012x}.parquet", "rows": shard.num_rows, "bytes": 1_640_000 + k,
         "sha256": f"{k:064x}", "tokens": 61 * shard.num_rows + k % 97, "truncated": k % 3, "chunked": 0,
         "bad_rows": 0, "embed_seconds": k / 8, "read_seconds": 0.125, "write_seconds": k / 1024,
         "stages": {s: k / (i + 2) for i, s in enumerate(("tokenize", "build", "forward", "copy_out"))},
         "row_offset": shard.row_offset, "input_rows": shard.num_rows, "worker": k % 8}
    if k % 1000 == 1:
        r["errors"] = f"_errors/{shard.id}-{k:012x}.parquet"
    return r


def child(location: str, n: int, gap_s: float, redo: bool = False) -> None:
    """Resume (or start) the run in `location` and commit the rest (see the module's docstring)."""
    import numpy as np
    from pipeline.output.commit_log import Commits
    from pipeline.output.manifest import Manifest, check_resumable
    from pipeline.output.output_folder import OutputFolder
    t0 = time.perf_counter()
    shards, plan_record = plan(n)
    folder = OutputFolder.open(location)
    folder.create()
    Commits()  # its first use imports the rest of pyarrow: a one-time cost, not the load's
    t1 = time.perf_counter()
    manifest = Manifest.load(folder)  # the resume's load: segments + the log's tail
    load_s = time.perf_counter() - t1
    if manifest is None:
        manifest = Manifest.new(folder, FINGERPRINT, plan_record)
    else:
        check_resumable(manifest, FINGERPRINT, plan_record)
    folder.remove_strays(keep=manifest.files(), listing=folder.sizes())  # as _prepare_output
    manifest.fold()
    manifest.put("input", None)
    manifest.save(force=True)
    start = manifest.committed()
    print(f"R {load_s:.4f} {time.perf_counter() - t0:.4f} {len(start)}", flush=True)
    everything = np.arange(len(shards))
    todo = shards.subset(everything if redo else np.setdiff1d(everything, start, assume_unique=True))
    waiting = []  # committed, not yet durable (object stores: the batch is not written yet)

    def acknowledge():
        if waiting and manifest.commits.has(waiting[-1]):  # durable: the batch is acknowledged
            print("\n".join(map(str, waiting)), flush=True)
            waiting.clear()

    for shard in todo:
        if gap_s:  # the driver waits for its workers: a batch that waited FLUSH_S is written
            time.sleep(gap_s)
            manifest.tick()
            acknowledge()
        manifest.commit(shard.id, record(shard))
        waiting.append(shard.index)
        acknowledge()
    manifest.flush()
    acknowledge()
    manifest.finish({"shards": len(shards)})
    manifest.save(force=True)
    print("D", flush=True)


if __name__ == "__main__":
    pipeline_output_only()
    child(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), "--redo" in sys.argv[4:])
