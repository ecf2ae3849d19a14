"""Benchmark: the pipeline tax and notebook calls, against the bare engine, side by side in one run.

    python benchmarks/bench_pipeline.py                        # 20,000 passages, 2 rounds, 300-text notebook calls
    python benchmarks/bench_pipeline.py --rows 5000 --rounds 3 --notebook 0

Rounds alternate the two systems on the same texts (bare, pipeline, bare, pipeline, ...) so
load from other processes hits both alike:
- bare: `Engine.embed` in this process with every core (model loaded once, one warm-up call);
- pipeline: `pipeline.run` reading the same texts from a Parquet file, embedding them in one
  Ray actor per worker and writing Parquet parts. Round 1 starts Ray and the actors (cold);
  later rounds reuse the warm actors (pipeline/execution/warm.py).
Per round it prints tokens/s of: the bare engine (wall, and its forward stage alone), the actor's
forward stage and its engine calls (summed over shards), and the pipeline end to end (wall, and
without its start-up), with the ratios to the bare engine; then the torch thread settings in
this process and inside an actor. `--notebook N` then times `pipeline.run(list of N texts)` in a
fresh Python process: first call, later calls (warm), and the bare engine on the same texts
(load + embed) in that process; twice: as a notebook gets it (N rows run in the process,
pipeline/execution/local.py) and through Ray (`in_process_rows=0`: Ray start, an actor, its model).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rows", type=int, default=20_000, help="passages to embed (default: 20,000)")
    p.add_argument("--seed", type=int, default=0, help="sample_passages seed (default: 0)")
    p.add_argument("--workers", type=int, default=1, help="pipeline workers; the cores are split evenly (default: 1)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of bare and pipeline (default: 2)")
    p.add_argument("--dtype", default="auto", help="engine compute dtype for both (default: auto)")
    p.add_argument("--notebook", type=int, default=300,
                   help="texts for the notebook-call timing in a fresh process (0: skip; default: 300)")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "pipeline"), help="scratch folder (emptied)")
    p.add_argument("--json", default=None, help="also write the measured rows to this JSON file")
    return p.parse_args(argv)


def bare_round(engine, texts: list[str]) -> dict:
    """One `Engine.embed` over every text: wall and forward-stage seconds, and where the CPU went."""
    from benchlib import CpuAccount
    tokens0, forward0 = engine.stats.tokens, engine.stats.forward_seconds
    account = CpuAccount().start()
    t0 = time.perf_counter()
    engine.embed(texts)
    return {"tokens": engine.stats.tokens - tokens0, "seconds": time.perf_counter() - t0,
            "forward": engine.stats.forward_seconds - forward0, "cpu": account.report()}


def pipeline_round(corpus: Path, out: Path, dtype: str, workers: int) -> dict:
    import pipeline
    from benchlib import CpuAccount
    shutil.rmtree(out, ignore_errors=True)
    account = CpuAccount().start()
    t0 = time.perf_counter()
    result = pipeline.run(str(corpus), output=str(out), num_workers=workers, dtype=dtype, progress=False)
    wall = time.perf_counter() - t0
    cpu = account.report()
    s, shards = result.stats, result.manifest["shards"].values()
    summed = {k: sum(r.get(k, 0.0) for r in shards) for k in ("read_seconds", "embed_seconds", "write_seconds")}
    per_shard = [(k, int(r["tokens"] / r["embed_seconds"])) for k, r in sorted(result.manifest["shards"].items())
                 if r.get("embed_seconds")]
    return {"tokens": s.tokens, "seconds": wall, "startup": s.startup_seconds, "cpu": cpu,
            "shard_rates": per_shard,
            "forward": sum(r.get("stages", {}).get("forward", 0.0) for r in shards), **summed}


def rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds else 0.0


def print_rounds(rounds: list[tuple[dict, dict]], workers: int) -> list[dict]:
    """The per-round table: tokens/s of each measure and its ratio to the bare engine's wall rate
    (the forward rows: to the bare engine's forward rate)."""
    rows = []
    print("\n| round | measure | tokens/s | vs bare |")
    print("|---:|---|---:|---:|")
    for k, (bare, pipe) in enumerate(rounds, 1):
        base, base_fwd = rate(bare["tokens"], bare["seconds"]), rate(bare["tokens"], bare["forward"])
        per_worker = workers  # summed actor seconds over `workers` actors: rate per worker x workers
        measures = [
            ("bare Engine.embed, wall", base, base),
            ("bare Engine.embed, forward stage", base_fwd, base_fwd),
            ("in-actor forward stage", per_worker * rate(pipe["tokens"], pipe["forward"]), base_fwd),
            ("in-actor engine calls (tokenize+forward)", per_worker * rate(pipe["tokens"], pipe["embed_seconds"]), base),
            (f"pipeline end to end{' (cold: Ray + actor start)' if k == 1 else ' (warm actors)'}",
             rate(pipe["tokens"], pipe["seconds"]), base),
            (f"pipeline without start-up ({pipe['startup']:.1f} s)",
             rate(pipe["tokens"], pipe["seconds"] - pipe["startup"]), base),
        ]
        for name, value, ref in measures:
            rows.append({"round": k, "measure": name, "tokens_per_s": value, "ratio": value / ref})
            print(f"| {k} | {name} | {value:,.0f} | {100 * value / ref:.1f}% |")
        print(f"| {k} | actor seconds summed: read {pipe['read_seconds']:.2f}, engine "
              f"{pipe['embed_seconds']:.1f}, write {pipe['write_seconds']:.2f}; tokens bare "
              f"{bare['tokens']:,} / pipeline {pipe['tokens']:,} | | |")
    for k, (bare, pipe) in enumerate(rounds, 1):
        print(f"\nround {k} bare:     {bare['cpu']}")
        print(f"round {k} pipeline: {pipe['cpu']}")
        print(f"round {k} in-actor tokens/s per shard, in order: "
              + ", ".join(f"{rate:,}" for _, rate in pipe["shard_rates"]))
    return rows


def thread_settings() -> None:
    """torch threads and thread env here and inside a warm actor (pipeline/execution/actor.py info())."""
    import torch

    from pipeline.execution import warm
    from pipeline.execution.actor import _THREAD_ENV
    here = {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ.get(k) for k in _THREAD_ENV}}
    pool = warm.warm_pool()
    import ray
    actor = ray.get(pool.workers[0].handle.info.remote()) if pool else {}
    print("\nthread settings: bare process", json.dumps(here))
    print("thread settings: actor       ", json.dumps({k: actor.get(k) for k in here}))


NOTEBOOK = r"""
import sys, time, json
t0 = time.perf_counter()
import pipeline
from pipeline.inputs.samples import sample_passages
texts, dtype, calls = sample_passages(int(sys.argv[1]), seed=7), sys.argv[2], []
in_process_rows = int(sys.argv[3])
imported = time.perf_counter() - t0
for _ in range(3):
    t = time.perf_counter()
    result = pipeline.run(texts, dtype=dtype, progress=False, in_process_rows=in_process_rows)
    calls.append(time.perf_counter() - t)
pipeline.shutdown()
from workers import Engine, EngineConfig
t = time.perf_counter()
engine = Engine(EngineConfig(dtype=dtype))
load = time.perf_counter() - t
t = time.perf_counter()
engine.embed(texts)
print(json.dumps({"import": imported, "calls": calls, "tokens": result.stats.tokens,
                  "bare_load": load, "bare_embed": time.perf_counter() - t}))
"""


def notebook_calls(n: int, dtype: str) -> dict:
    """`pipeline.run(list of n texts)` three times in a fresh process, then the bare engine
    there: once as a notebook gets it (in this process: pipeline/execution/local.py) and once through Ray
    (`in_process_rows=0`: Ray start, one actor, its model)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    runs = {}
    for name, rows in (("in process", n), ("Ray actor", 0)):
        done = subprocess.run([sys.executable, "-c", NOTEBOOK, str(n), dtype, str(rows)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"notebook timing failed:\n{done.stderr[-3000:]}")
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    r, ray_run = runs["in process"], runs["Ray actor"]
    print(f"\n| notebook: pipeline.run({n:,} texts, {r['tokens']:,} tokens), fresh process | in process "
          "(default) s | Ray actor (in_process_rows=0) s |")
    print("|---|---:|---:|")
    print(f"| import pipeline | {r['import']:.2f} | {ray_run['import']:.2f} |")
    for k, name in enumerate(("first call (Ray start, actor start or in-process engine, model load)",
                              "second call (warm)", "third call (warm)")):
        print(f"| {name} | {r['calls'][k]:.2f} | {ray_run['calls'][k]:.2f} |")
    print(f"| bare engine in the same process: load | {r['bare_load']:.2f} | {ray_run['bare_load']:.2f} |")
    print(f"| bare engine in the same process: embed | {r['bare_embed']:.2f} | {ray_run['bare_embed']:.2f} |")
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from benchlib import machine, sample_passages
    texts = sample_passages(args.rows, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.parquet"
    pq.write_table(pa.table({"text": texts}), corpus, row_group_size=2048)
    cores = os.cpu_count() or 1
    print(f"{len(texts):,} passages, {machine()}, dtype={args.dtype}, {args.workers} worker(s)", flush=True)
    from workers import Engine, EngineConfig
    engine = Engine(EngineConfig(dtype=args.dtype, num_threads=cores))
    engine.embed(texts[:64])
    rounds = []
    for k in range(args.rounds):
        bare = bare_round(engine, texts)
        pipe = pipeline_round(corpus, out / "emb", args.dtype, args.workers)
        rounds.append((bare, pipe))
        print(f"round {k + 1}: bare {rate(bare['tokens'], bare['seconds']):,.0f} tokens/s, pipeline "
              f"{rate(pipe['tokens'], pipe['seconds']):,.0f} tokens/s", flush=True)
    rows = print_rounds(rounds, args.workers)
    thread_settings()
    import pipeline
    pipeline.shutdown()
    del engine
    notebook = notebook_calls(args.notebook, args.dtype) if args.notebook else None
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows, "notebook": notebook}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
