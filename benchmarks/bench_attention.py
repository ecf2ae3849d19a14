"""Attention alone: per-sequence SDPA vs the cpu_varlen kernel's paths, on packed batches.

    python benchmarks/bench_attention.py                     # MiniLM and MPNet shapes, 4,096 tokens
    python benchmarks/bench_attention.py --tokens 1024 --repeats 3

For each shape (heads x head dim, a range of sequence lengths drawn uniformly until the batch
holds --tokens tokens) and dtype, every backend/path runs the same q, k, v (strided views of one
fused projection, as the models pass them); the table gives the best time of --repeats
alternating calls, the attention GFLOP/s (4 L^2 D H per sequence), the speedup over SDPA and
the largest difference from the naive fp32-softmax reference. bf16 paths this CPU cannot run
are left out (see attention/cpu_varlen.py).
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from attention import AttentionMetadata
from attention.cpu_varlen import CpuVarlenAttention, bf16_paths, load
from attention.naive import NaiveAttention
from attention.sdpa import SdpaAttention
from benchlib import machine

CPU = torch.device("cpu")
SHAPES = [("MiniLM", 12, 32, 16, 256), ("MiniLM short", 12, 32, 8, 96), ("MPNet", 12, 64, 16, 384)]


def _meta(lens):
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    return AttentionMetadata(cu_seqlens=cu, max_seqlen=max(lens), seqlens=list(lens))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per packed batch")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per system (best kept)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if load()[1]:
        raise SystemExit(f"cpu_varlen cannot be built here: {load()[1]}")
    rng = random.Random(args.seed)
    print(f"machine: {machine(torch.get_num_threads())}")
    print(f"bf16 paths here: {', '.join(bf16_paths())}\n")
    print("| shape | dtype | system | ms | GFLOP/s | vs sdpa | max abs diff vs naive |")
    print("|---|---|---|---:|---:|---:|---:|")
    for label, heads, dim, lo, hi in SHAPES:
        lens = []
        while sum(lens) < args.tokens:
            lens.append(rng.randint(lo, hi))
        flops = sum(4 * n * n * dim * heads for n in lens)
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(args.seed)
            qkv = torch.randn(sum(lens), 3, heads, dim, generator=g).to(dtype)
            q, k, v = qkv.unbind(1)
            ref = NaiveAttention(CPU, dtype).forward(q, k, v, _meta(lens)).float()
            systems = {"sdpa": SdpaAttention(CPU, dtype)}
            for path in bf16_paths() if dtype == torch.bfloat16 else ["fma"]:
                systems[f"cpu_varlen/{path}"] = backend = CpuVarlenAttention(CPU, dtype)
                backend.bf16_path = path
            metas = {name: b.prepare(_meta(lens)) for name, b in systems.items()}
            best, diff = {}, {}
            for name, b in systems.items():
                diff[name] = (b.forward(q, k, v, metas[name]).float() - ref).abs().max().item()
            for _ in range(args.repeats):
                for name, b in systems.items():
                    t = time.perf_counter()
                    b.forward(q, k, v, metas[name])
                    best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
            for name in systems:
                print(f"| {label} {heads}x{dim}, {len(lens)} seqs of {lo}-{hi} | "
                      f"{str(dtype).removeprefix('torch.')} | {name} | {best[name] * 1e3:.1f} | "
                      f"{flops / best[name] / 1e9:.0f} | {best['sdpa'] / best[name]:.2f}x | "
                      f"{diff[name]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
