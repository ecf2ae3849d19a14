"""A synthetic driver for the commit log's crash tests (tests/pipeline/test_commit_log.py):
it commits N shards of fake parts through the real `Manifest`, printing each shard once its
`commit` returned. Run as a script (`python tests/commit_driver.py OUTPUT START STOP`) it is a
process a test can SIGKILL (PIPELINE_CRASH_AT) and then resume."""
from __future__ import annotations

import sys
from pathlib import Path

N = 23  # shards of a synthetic run


def record(k: int) -> dict:
    """A record shaped like a real commit (nested stages, an optional errors file)."""
    r = {"path": f"part-{k:06d}-{k:012x}.parquet", "rows": 10 + k, "bytes": 1000 + k, "sha256": f"{k:064x}",
         "tokens": 7 * k, "embed_seconds": k / 8, "stages": {"tokenize": 0.5, "forward": k / 4},
         "row_offset": 10 * k, "input_rows": 10 + k, "worker": k % 3}
    if k % 4 == 1:
        r["errors"] = f"_errors/{k:06d}-{k:012x}.parquet"
    return r


def drive(folder, start: int, stop: int) -> None:
    """Resume (or start) the manifest in `folder`, then commit shards start..stop-1 not yet
    committed, printing each once it is."""
    from pipeline.output.manifest import Manifest
    m = Manifest.load(folder) or Manifest.new(folder, {"engine": {}}, {"num_shards": N})
    m.fold()  # what a resume does first
    for k in range(start, stop):
        if f"{k:06d}" not in m.shards:
            m.commit(f"{k:06d}", record(k))
            m.flush()
            print(k, flush=True)


if __name__ == "__main__":
    import types
    # Only pipeline.output is needed: skip the package's __init__ (it imports Ray and the
    # engine, seconds of start-up for a process that writes a few small files).
    package = types.ModuleType("pipeline")
    package.__path__ = [str(Path(__file__).resolve().parents[1] / "pipeline")]
    sys.modules["pipeline"] = package
    from pipeline.output.output_folder import OutputFolder
    drive(OutputFolder.open(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
