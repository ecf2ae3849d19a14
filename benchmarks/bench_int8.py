"""CPU kernels and int8 weights: engine fp32, bf16 (plain linears), bf16 with prepacked oneDNN
linears and int8, side by side in alternating rounds, plus the int8 quality gate.

    python benchmarks/bench_int8.py                          # 600 held-out passages, 3 rounds
    python benchmarks/bench_int8.py --passages 200 --rounds 2

Prints tokens/s per system and the ratio to engine bf16 (plain), the bf16 linear ceiling at the
model's shapes measured in this run and each bf16 system's share of it, and the quality gate of
int8 against engine fp32 on the same passages (none of them a calibration passage): min and
median cosine (gate >= 0.99 and >= 0.998) and top-10 retrieval overlap (gate >= 0.95), where
each passage's first sentence is a query and the top 10 of all passages are compared.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from benchlib import DTYPES, alternating_rounds, cosines, flops_per_token, linear_shapes, machine, matmul_ceiling, sample_passages
from workers import Engine, EngineConfig
from workers.quant import int8
from workers.models import packed_linear

SYSTEMS = {  # name -> (dtype, quantization, packed linears)
    "fp32": ("float32", None, False),
    "fp32-packed": ("float32", None, True),
    "bf16": ("bfloat16", None, False),
    "bf16-packed": ("bfloat16", None, True),
    "int8": ("bfloat16", "int8", True),
}


def engine(name: str, args) -> Engine:
    dtype, quantization, packed = SYSTEMS[name]
    packed_linear.ENABLED = packed
    try:
        return Engine(EngineConfig(dtype=dtype, quantization=quantization, num_threads=args.threads,
                                   max_length=args.max_length))
    finally:
        packed_linear.ENABLED = True


def top10_overlap(queries: np.ndarray, docs: np.ndarray, ref_q: np.ndarray, ref_d: np.ndarray) -> float:
    """Mean share of the fp32 top-10 documents that the other system's top-10 also returns."""
    def top(q, d):
        return np.argsort(-(q @ d.T), axis=1)[:, :10]
    got, want = top(queries, docs), top(ref_q, ref_d)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]))


def quality(engines: dict, texts: list[str], ref: np.ndarray, vectors: np.ndarray) -> dict:
    cos = cosines(vectors, ref)
    queries = [t.split(". ")[0][:200] for t in texts]
    q_int8, q_ref = engines["int8"].embed(queries), engines["fp32"].embed(queries)
    return {"min": cos.min(), "median": float(np.median(cos)),
            "top10": top10_overlap(q_int8, vectors, q_ref, ref)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=600, help="held-out real-text passages")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (best kept)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--max-length", type=int, default=256, help="truncation length")
    p.add_argument("--seed", type=int, default=1, help="corpus sampling seed")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seen = set(int8.calibration_texts())
    texts = [t for t in sample_passages(args.passages + 200, seed=args.seed) if t not in seen][:args.passages]
    names = [n for n in args.systems.split(",") if n]
    engines = {n: engine(n, args) for n in dict.fromkeys(["fp32", *names])}
    lengths = np.array([len(ids) for ids in engines["fp32"].processor(texts).ids])
    tokens, cfg = int(lengths.sum()), engines["fp32"].folder.hf_config
    fpt = flops_per_token(cfg, lengths)
    ceiling = matmul_ceiling(linear_shapes(cfg, engines["fp32"].resolved.max_num_batched_tokens), DTYPES["bf16"])
    results = alternating_rounds({n: engines[n].embed for n in names}, texts, args.rounds)
    print(f"\nmachine: {machine(args.threads)}")
    print(f"corpus: {len(texts)} held-out passages, {tokens:,} tokens; model all-MiniLM-L6-v2, "
          f"{fpt / 1e6:.1f} MFLOP/token; bf16 linear ceiling at its shapes {ceiling / 1e9:,.0f} GFLOP/s")
    base = results.get("bf16", (None, None))[1]
    print("\n| system | tokens/s | vs bf16 | % of bf16 ceiling |")
    print("|---|---:|---:|---:|")
    for name, (_, seconds) in results.items():
        frac = f"{tokens / seconds * fpt / ceiling:.0%}" if SYSTEMS[name][0] == "bfloat16" else "-"
        ratio = f"{base / seconds:.2f}x" if base else "-"
        print(f"| {name} | {tokens / seconds:,.0f} | {ratio} | {frac} |")
    if "int8" in results:
        ref = results["fp32"][0] if "fp32" in results else engines["fp32"].embed(texts)
        q = quality(engines, texts, ref, results["int8"][0])
        ok = q["min"] >= 0.99 and q["median"] >= 0.998 and q["top10"] >= 0.95
        print(f"\nint8 vs fp32: min cosine {q['min']:.5f} (>= 0.99), median {q['median']:.5f} "
              f"(>= 0.998), top-10 overlap {q['top10']:.3f} (>= 0.95): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
