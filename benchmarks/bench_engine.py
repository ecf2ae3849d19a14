"""Engine benchmarks: this engine vs its peers on the same real texts, in one run.

    python benchmarks/bench_engine.py engine                      # 3,000 passages, all systems
    python benchmarks/bench_engine.py engine --passages 500 --systems engine-bf16,st-fp32
    python benchmarks/bench_engine.py loops                       # simple vs double_buffer execute loops
    python benchmarks/bench_engine.py loops --cheap               # ... on a 2-layer, 128-wide model, where
                                                     # tokenizing is a large share of the time

Prints one table: tokens/s per system, the ratio to sentence-transformers fp32, the model's
FLOPs/token, the matmul ceiling measured in this run (per dtype, at the model's own shapes) and
the fraction of it each system reaches, and the worst cosine against sentence-transformers fp32.
Every system embeds the same texts truncated at the same max length; tokens are counted once.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import write_random_folder, DTYPES, flops_per_token, linear_shapes, machine, matmul_ceiling, min_cosine, sample_passages
from workers import Engine, EngineConfig
from workers.loading.model_folder import default_model_path


def run_engine(texts, dtype: str, args, attention: str | None = None):
    engine = Engine(EngineConfig(dtype=dtype, max_length=args.max_length, num_threads=args.threads,
                                 max_num_batched_tokens=args.batch_tokens, attention_backend=attention))
    engine.embed(texts)  # warm: oneDNN compiles a kernel per new batch shape on first sight
    t = time.perf_counter()
    vectors = engine.embed(texts)
    return vectors, time.perf_counter() - t


def run_st(texts, dtype: str, args):
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.max_seq_length = args.max_length
    model = model.to(DTYPES[dtype])
    model.encode(texts[:64], batch_size=32)
    t = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
    return vectors.astype(np.float32), time.perf_counter() - t


def run_hf_padded(texts, dtype: str, args):
    """Plain transformers: padded batches of 32 in input order, mean pooling, normalize."""
    from transformers import AutoModel, AutoTokenizer
    path = str(default_model_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(DTYPES[dtype]).eval()

    def encode(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    encode(texts[:32])
    t = time.perf_counter()
    vectors = np.concatenate([encode(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    return vectors, time.perf_counter() - t


SYSTEMS = {
    "engine-fp32": (run_engine, "float32", "fp32"),
    "engine-bf16": (run_engine, "bfloat16", "bf16"),
    # the same engine with torch's SDPA once per sequence instead of the cpu_varlen kernel
    "engine-fp32-sdpa": (lambda t, d, a: run_engine(t, d, a, "sdpa"), "float32", "fp32"),
    "engine-bf16-sdpa": (lambda t, d, a: run_engine(t, d, a, "sdpa"), "bfloat16", "bf16"),
    "st-fp32": (run_st, "fp32", "fp32"),
    "st-bf16": (run_st, "bf16", "bf16"),
    "hf-padded-fp32": (run_hf_padded, "fp32", "fp32"),
}


def bench_engine(args) -> None:
    torch.set_num_threads(args.threads)
    texts = sample_passages(args.passages, seed=args.seed)
    probe = Engine(EngineConfig(dtype="float32", max_length=args.max_length,
                                max_num_batched_tokens=args.batch_tokens))
    lengths = np.array([len(ids) for ids in probe.processor(texts).ids])
    tokens = int(lengths.sum())
    cfg = probe.folder.hf_config
    fpt = flops_per_token(cfg, lengths)
    shapes = linear_shapes(cfg, probe.resolved.max_num_batched_tokens)
    ceilings = {name: matmul_ceiling(shapes, DTYPES[name]) for name in ("fp32", "bf16")}
    names = args.systems.split(",")
    results = {}
    for name in names:
        fn, dtype, ceil_key = SYSTEMS[name]
        vectors, seconds = fn(texts, dtype, args)
        results[name] = (vectors, seconds, ceil_key)
        print(f"  {name:16s} {tokens / seconds:10,.0f} tokens/s ({seconds:.1f} s)", flush=True)
    print_table(args, texts, tokens, lengths, fpt, ceilings, results)


def print_table(args, texts, tokens, lengths, fpt, ceilings, results) -> None:
    ref = results.get("st-fp32", (None, None))[0]
    base = results["st-fp32"][1] if "st-fp32" in results else None
    print(f"\nmachine: {machine(args.threads)}")
    print(f"corpus: {len(texts)} passages, {tokens:,} tokens after truncation at {args.max_length} "
          f"(median {int(np.median(lengths))}, max {lengths.max()})")
    print(f"model: all-MiniLM-L6-v2, {fpt / 1e6:.1f} MFLOP/token; matmul ceiling at "
          f"its shapes: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in ceilings.items()))
    print(f"\n| system | tokens/s | vs st-fp32 | % of matmul ceiling | min cosine vs st-fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, (vectors, seconds, ceil_key) in results.items():
        rate = tokens / seconds
        ratio = f"{base / seconds:.2f}x" if base else "-"
        frac = rate * fpt / ceilings[ceil_key]
        cos = "-"
        if ref is not None:
            cos = f"{min_cosine(vectors, ref):.6f}"
        print(f"| {name} | {rate:,.0f} | {ratio} | {frac:.0%} ({ceil_key}) | {cos} |")


def cheap_model(folder: Path) -> str:
    """A random 2-layer, 128-wide BERT with the bundled tokenizer: forward costs ~1/20 of
    MiniLM's, so tokenizing becomes a large share of the time (the case double buffering is for)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512)
    config.architectures = ["BertModel"]
    return str(write_random_folder(config, folder, default_model_path(), perturb=False))


def bench_loops(args) -> None:
    """simple vs double_buffer, per dtype and torch thread count, with per-stage shares."""
    import tempfile
    texts = sample_passages(args.passages, seed=args.seed)
    model = args.model
    if args.cheap:
        model = cheap_model(Path(tempfile.mkdtemp()) / "cheap-bert")
    print(f"machine: {machine()}; {len(texts)} passages; "
          f"model: {'cheap 2-layer 128-wide BERT (random weights)' if args.cheap else model or 'bundled MiniLM'}")
    print("\n| dtype | loop | torch threads | tokens/s | vs simple | tokenize % | build % | "
          "forward % | compute idle % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for dtype in ("bfloat16", "float32"):
        base = None
        for loop, threads in (("simple", os.cpu_count()), ("double_buffer", os.cpu_count()),
                              ("double_buffer", max(1, os.cpu_count() - 1))):
            engine = Engine(EngineConfig(model=model, dtype=dtype, execute_loop=loop, num_threads=threads,
                                         max_num_batched_tokens=args.batch_tokens, max_length=256))
            engine.embed(texts[:64])
            best = None
            for _ in range(args.repeats):
                engine.stats = type(engine.stats)()
                engine.embed(texts)
                if best is None or engine.stats.seconds < best.seconds:
                    best = engine.stats
            rate = best.tokens_per_second
            base = base or rate
            pct = {k: 100 * getattr(best, f"{k}_seconds") / best.seconds
                   for k in ("tokenize", "build", "forward", "idle")}
            print(f"| {dtype} | {loop} | {threads} | {rate:,.0f} | {rate / base:.2f}x | "
                  f"{pct['tokenize']:.1f} | {pct['build']:.1f} | {pct['forward']:.1f} | "
                  f"{pct['idle']:.1f} |", flush=True)
    torch.set_num_threads(os.cpu_count())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("engine", help="engine vs sentence-transformers and transformers on CPU")
    p.add_argument("--passages", type=int, default=3000, help="number of real-text passages")
    p.add_argument("--max-length", type=int, default=256, help="truncation length for every system")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--batch-tokens", type=int, default=None, help="engine token budget per batch")
    p.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p = sub.add_parser("loops", help="simple vs double_buffer execute loops on CPU")
    p.add_argument("--passages", type=int, default=3000, help="number of real-text passages")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best kept)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled MiniLM)")
    p.add_argument("--cheap", action="store_true",
                   help="a random 2-layer 128-wide BERT, so tokenizing is a large share of the time")
    p.add_argument("--batch-tokens", type=int, default=None, help="engine token budget per batch")
    p.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    args = parser.parse_args()
    if args.bench == "loops":
        return bench_loops(args)
    bad = set(args.systems.split(",")) - set(SYSTEMS)
    if bad:
        parser.error(f"unknown systems {sorted(bad)}; choose from {sorted(SYSTEMS)}")
    bench_engine(args)


if __name__ == "__main__":
    main()
