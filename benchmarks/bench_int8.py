"""CPU kernels and int8 weights: engine fp32, bf16 (plain linears), bf16 with prepacked oneDNN
linears and int8, side by side in alternating rounds, plus the int8 quality gate.

    python benchmarks/bench_int8.py                          # 600 held-out passages, 3 rounds
    python benchmarks/bench_int8.py --passages 200 --rounds 2

Prints tokens/s per system and the ratio to engine bf16 (plain); the matmul ceilings at the
model's linear shapes (one batch of --batch-tokens tokens: torch's bf16 linear, the prepacked
oneDNN bf16 linear the engine uses, and oneDNN's u8 x s8 int8 linear) timed *in the same rounds*
as the forwards, interleaved, so each round's forward is divided by that round's ceiling, and
the share is printed as the median with its spread over rounds; the tokenizer's time as a share
of each system's embed time; and the quality gate of int8 against engine fp32 on the same
passages (none of them a calibration passage): min and median cosine (gate >= 0.99 and
>= 0.998) and top-10 retrieval overlap (gate >= 0.95), where each passage's first sentence is
a query and the top 10 of all passages are compared.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from benchlib import alternating_rounds, cosines, flops_per_token, linear_shapes, machine, sample_passages
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
                                   max_length=args.max_length, max_num_batched_tokens=args.batch_tokens))
    finally:
        packed_linear.ENABLED = True


class Ceiling:
    """One kind of linear at the model's shapes (M tokens, K in, N out), each called `reps` times
    per round: `kind` "bf16" (torch F.linear), "bf16-packed" (the engine's PackedLinear) or
    "int8" (`Int8Linear.matmul`: u8 x s8, fp32 out with the weight scales)."""

    def __init__(self, kind: str, shapes, reps: int):
        self.calls, self.reps = [], reps
        self.flops = 2.0 * reps * sum(M * K * N for M, K, N in shapes)
        for M, K, N in shapes:
            lin = nn.Linear(K, N)
            if kind == "bf16":
                x, w = torch.randn(M, K, dtype=torch.bfloat16), torch.randn(N, K, dtype=torch.bfloat16)
                self.calls.append(lambda x=x, w=w: torch.nn.functional.linear(x, w))
            elif kind == "bf16-packed":
                packed, x = packed_linear.PackedLinear(lin.bfloat16(), M), torch.randn(M, K, dtype=torch.bfloat16)
                self.calls.append(lambda packed=packed, x=x: packed(x))
            else:
                q = int8.Int8Linear(lin, torch.ones(K), torch.bfloat16)
                xq = torch.randint(0, 256, (M, K), dtype=torch.uint8)
                self.calls.append(lambda q=q, xq=xq: q.matmul(xq))

    def __call__(self, _texts=None):
        with torch.inference_mode():
            for _ in range(self.reps):
                for call in self.calls:
                    call()


def tokenizer_seconds(engine: Engine, texts: list[str], rounds: int = 2) -> float:
    """Best time of the engine's own input processor over `texts` (what embed() runs first)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        engine.processor(texts)
        best = min(best, time.perf_counter() - t)
    return best


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
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per batch, and M of the ceilings")
    p.add_argument("--ceiling-reps", type=int, default=4, help="calls per shape in one ceiling round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seen = set(int8.calibration_texts())
    texts = [t for t in sample_passages(args.passages + 200, seed=args.seed) if t not in seen][:args.passages]
    names = [n for n in args.systems.split(",") if n]
    engines = {n: engine(n, args) for n in dict.fromkeys(["fp32", *names])}
    lengths = np.array([len(ids) for ids in engines["fp32"].processor(texts).ids])
    tokens, cfg = int(lengths.sum()), engines["fp32"].folder.hf_config
    fpt = flops_per_token(cfg, lengths)
    shapes = linear_shapes(cfg, args.batch_tokens)
    ceilings = {f"ceiling-{k}": Ceiling(k, shapes, args.ceiling_reps) for k in ("bf16", "bf16-packed", "int8")}
    timed = {**{n: engines[n].embed for n in names}, **ceilings}
    every: dict[str, list[float]] = {}
    results = alternating_rounds(timed, texts, args.rounds, every)
    print(f"\nmachine: {machine(args.threads)}")
    print(f"corpus: {len(texts)} held-out passages, {tokens:,} tokens; model all-MiniLM-L6-v2, "
          f"{fpt / 1e6:.1f} MFLOP/token; batches of {args.batch_tokens} tokens")

    def rates(name):  # per round: FLOP/s of a forward (all its FLOPs) or of a ceiling
        work = ceilings[name].flops if name in ceilings else tokens * fpt
        return np.array([work / sec for sec in every[name]])

    def spread(x):
        return f"{np.median(x):.0%} ({x.min():.0%}-{x.max():.0%})"

    print("\nceilings at the model's linear shapes, interleaved with the forwards (GFLOP/s or GOP/s):")
    for name in ceilings:
        r = rates(name) / 1e9
        print(f"  {name}: best {r.max():,.0f}, median {np.median(r):,.0f}, rounds {', '.join(f'{v:,.0f}' for v in r)}")
    base_name = "bf16-packed" if "bf16-packed" in results else "bf16"  # the engine's bf16 default first
    base = results.get(base_name, (None, None))[1]
    print(f"\n| system | tokens/s | vs {base_name} | share of bf16-packed ceiling, median (min-max) | share of int8 ceiling | tokenizer share |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        seconds = results[name][1]
        bf16_share = spread(rates(name) / rates("ceiling-bf16-packed"))
        int8_share = spread(rates(name) / rates("ceiling-int8")) if name == "int8" else "-"
        tok = tokenizer_seconds(engines[name], texts) / seconds
        ratio = f"{base / seconds:.2f}x" if base else "-"
        print(f"| {name} | {tokens / seconds:,.0f} | {ratio} | {bf16_share} | {int8_share} | {tok:.0%} |")
    if "int8" in results:
        ref = results["fp32"][0] if "fp32" in results else engines["fp32"].embed(texts)
        q = quality(engines, texts, ref, results["int8"][0])
        ok = q["min"] >= 0.99 and q["median"] >= 0.998 and q["top10"] >= 0.95
        print(f"\nint8 vs fp32: min cosine {q['min']:.5f} (>= 0.99), median {q['median']:.5f} "
              f"(>= 0.998), top-10 overlap {q['top10']:.3f} (>= 0.95): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
