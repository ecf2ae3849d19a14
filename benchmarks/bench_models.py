"""Architecture benchmarks on CPU (issue 14): real all-mpnet-base-v2 against its peers, and the
transformers fallback against the native packed body on the same model.

    python benchmarks/bench_models.py mpnet                      # 3,000 passages, six systems (needs `make models`)
    python benchmarks/bench_models.py mpnet --passages 600 --rounds 1
    python benchmarks/bench_models.py fallback                   # bundled MiniLM: native vs implementation="transformers"
    python benchmarks/bench_models.py profile --passages 300     # where the engine's bf16 MPNet time goes

`mpnet`: engine bf16/fp32, sentence-transformers `encode` fp32/bf16 (`model.to(bfloat16)`), and
plain transformers (AutoModel, batches of 32 sorted by text length as sentence-transformers
sorts them, padded, mean pooling, normalize) fp32/bf16. Every system gets the same texts, the
same truncation (384 tokens, the model's max_seq_length) and the same torch threads; they run in
alternating rounds (best kept), so load from other processes does not land on one system only.
Prints tokens/s, the ratio to sentence-transformers bf16 (issue 14's goal: engine bf16 >= 1.6x),
the share of the matmul ceiling measured in this run at the model's shapes, and each system's
worst cosine against sentence-transformers fp32.

`fallback`: the same folder through the native packed body and through the transformers
fallback (padded, length-sorted batches), fp32 and bf16: the fallback's cost, and the worst
cosine between the two in each dtype. `profile`: torch profiler over the engine's embed, self
CPU time grouped by what the ops do, plus the engine's own stage times (tokenize, build).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from benchlib import (DTYPES, ROOT, alternating_rounds, flops_per_token, linear_shapes, machine,
                      matmul_ceiling, min_cosine, sample_passages)
from workers import Engine, EngineConfig

GOAL = 1.6  # issue 14: engine bf16 >= 1.6x sentence-transformers bf16 on all-mpnet-base-v2
ENGINE_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def default_mpnet() -> Path:
    """Where `make models` puts all-mpnet-base-v2 ($PREFILL_EMBED_MODELS overrides .models)."""
    return Path(os.environ.get("PREFILL_EMBED_MODELS", ROOT / ".models")) / "all-mpnet-base-v2"


def make_engine(path: str | None, dtype: str, args, implementation: str = "auto"):
    engine = Engine(EngineConfig(model=path, dtype=ENGINE_DTYPES[dtype], max_length=args.max_length,
                                 num_threads=args.threads, max_num_batched_tokens=args.batch_tokens,
                                 implementation=implementation))
    return engine.embed


def make_st(path: str, dtype: str, args):
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(path, device="cpu").to(DTYPES[dtype])
    model.max_seq_length = args.max_length
    return lambda texts: model.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32)


def make_hf_sorted(path: str, dtype: str, args):
    """transformers by hand: longest texts first in batches of 32, padded, mean pooled, normalized."""
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype]).eval()

    def encode(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state.float()                # (b, L, hidden)
        mask = enc["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    def embed(texts):
        order = np.argsort([-len(t) for t in texts], kind="stable")
        sorted_texts = [texts[i] for i in order]
        vectors = np.concatenate([encode(sorted_texts[i:i + 32]) for i in range(0, len(texts), 32)])
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    return embed


MPNET_SYSTEMS = {
    "engine-bf16": (make_engine, "bf16"), "engine-fp32": (make_engine, "fp32"),
    "st-fp32": (make_st, "fp32"), "st-bf16": (make_st, "bf16"),
    "hf-sorted-fp32": (make_hf_sorted, "fp32"), "hf-sorted-bf16": (make_hf_sorted, "bf16"),
}


def corpus(args, path: str | None):
    """The texts, their token counts after truncation (the engine's tokenizer), and the HF config."""
    texts = sample_passages(args.passages, seed=args.seed)
    probe = Engine(EngineConfig(model=path, dtype="float32", max_length=args.max_length))
    args.max_length = probe.resolved.max_length  # None: the folder's own, now fixed for every system
    lengths = np.array([len(ids) for ids in probe.processor(texts).ids])
    return texts, lengths, probe.folder.hf_config


def header(args, name: str, texts, lengths, cfg) -> tuple[float, dict[str, float]]:
    """Print the machine, corpus and model lines; return FLOPs/token and the matmul ceilings."""
    fpt = flops_per_token(cfg, lengths)
    shapes = linear_shapes(cfg, args.batch_tokens or 4096)
    ceilings = {k: matmul_ceiling(shapes, DTYPES[k]) for k in ("fp32", "bf16")}
    print(f"\nmachine: {machine(args.threads)}")
    print(f"corpus: {len(texts)} passages, {int(lengths.sum()):,} tokens after truncation at "
          f"{args.max_length} (median {int(np.median(lengths))}, max {lengths.max()})")
    print(f"model: {name}, {fpt / 1e6:.0f} MFLOP/token; matmul ceiling at its shapes: "
          + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in ceilings.items())
          + f"; best of {args.rounds} alternating rounds")
    return fpt, ceilings


def bench_mpnet(args) -> None:
    path = str(args.model or default_mpnet())
    if not (Path(path) / "config.json").is_file():
        raise SystemExit(f"{path} has no config.json: run `make models` to rebuild all-mpnet-base-v2, "
                         "or pass --model FOLDER")
    texts, lengths, cfg = corpus(args, path)
    systems = {name: MPNET_SYSTEMS[name][0](path, MPNET_SYSTEMS[name][1], args) for name in args.systems}
    results = alternating_rounds(systems, texts, args.rounds)
    fpt, ceilings = header(args, Path(path).name, texts, lengths, cfg)
    tokens = int(lengths.sum())
    ref = results.get("st-fp32", (None,))[0]
    base = results["st-bf16"][1] if "st-bf16" in results else None
    print("\n| system | tokens/s | vs st-bf16 | % of matmul ceiling | min cosine vs st-fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, (vectors, seconds) in results.items():
        dtype = MPNET_SYSTEMS[name][1]
        rate = tokens / seconds
        ratio = f"{base / seconds:.2f}x" if base else "-"
        cos = f"{min_cosine(vectors, ref):.6f}" if ref is not None else "-"
        print(f"| {name} | {rate:,.0f} | {ratio} | {rate * fpt / ceilings[dtype]:.0%} ({dtype}) | {cos} |")
    if base and "engine-bf16" in results:
        ratio = base / results["engine-bf16"][1]
        print(f"\ngoal engine-bf16 >= {GOAL}x st-bf16: {'met' if ratio >= GOAL else 'NOT met'} ({ratio:.2f}x)")


def bench_fallback(args) -> None:
    """Native packed body vs the transformers fallback on one folder, per dtype."""
    path = args.model
    texts, lengths, cfg = corpus(args, path)
    systems = {}
    for dtype in args.dtypes:
        systems[f"native-{dtype}"] = make_engine(path, dtype, args, "native")
        systems[f"transformers-{dtype}"] = make_engine(path, dtype, args, "transformers")
    results = alternating_rounds(systems, texts, args.rounds)
    fpt, ceilings = header(args, Path(path).name if path else "bundled all-MiniLM-L6-v2", texts, lengths, cfg)
    tokens = int(lengths.sum())
    print("\n| system | tokens/s | vs native, same dtype | % of matmul ceiling | min cosine vs native, same dtype |")
    print("|---|---:|---:|---:|---:|")
    for name, (vectors, seconds) in results.items():
        dtype = name.rsplit("-", 1)[1]
        native_vectors, native_seconds = results[f"native-{dtype}"]
        rate = tokens / seconds
        print(f"| {name} | {rate:,.0f} | {native_seconds / seconds:.2f}x | "
              f"{rate * fpt / ceilings[dtype]:.0%} ({dtype}) | {min_cosine(vectors, native_vectors):.6f} |")


# Self-CPU time of profiler ops, grouped by what they do in an encoder forward (first match wins).
OP_GROUPS = (
    ("linears (matmul)", ("aten::addmm", "aten::mm", "aten::linear", "mkldnn::", "aten::matmul")),
    ("attention kernel (SDPA)", ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::bmm",
                                 "aten::baddbmm", "aten::_softmax", "aten::softmax")),
    ("layer norm", ("aten::native_layer_norm", "aten::layer_norm")),
    ("activation (GELU)", ("aten::gelu",)),
    ("copies and layout", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous",
                           "aten::clone", "aten::empty_like", "aten::index", "aten::cat")),
    ("embeddings and bias table", ("aten::embedding", "aten::index_select", "aten::log", "aten::where",
                                   "aten::clamp", "aten::arange", "aten::masked_fill")),
    ("elementwise (add, pooling, normalize)", ("aten::add", "aten::mul", "aten::div", "aten::sum",
                                               "aten::norm", "aten::linalg_vector_norm", "aten::mean")),
)


def bench_profile(args) -> None:
    """One profiled embed after a warm-up: self CPU time by op group, and the engine's stages."""
    from torch.profiler import ProfilerActivity, profile
    path = str(args.model or default_mpnet())
    texts = sample_passages(args.passages, seed=args.seed)
    engine = Engine(EngineConfig(model=path, dtype=ENGINE_DTYPES[args.dtype], max_length=args.max_length,
                                 num_threads=args.threads, max_num_batched_tokens=args.batch_tokens))
    engine.embed(texts[:64])
    engine.stats = type(engine.stats)()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.embed(texts)
    stats = engine.stats
    events = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(s for _, s, _ in events)
    groups: dict[str, float] = {}
    for key, seconds, _ in events:
        group = next((g for g, prefixes in OP_GROUPS if key.startswith(prefixes)), "other")
        groups[group] = groups.get(group, 0.0) + seconds
    print(f"\nmachine: {machine(args.threads)}")
    print(f"engine {args.dtype} on {Path(path).name}: {len(texts)} passages, {stats.tokens:,} tokens, "
          f"{stats.tokens_per_second:,.0f} tokens/s under the profiler; wall {stats.seconds:.2f} s = "
          f"tokenize {stats.tokenize_seconds:.2f} + build {stats.build_seconds:.2f} + "
          f"forward {stats.forward_seconds:.2f} s (+ rest)")
    print("\n| op group | self CPU s | share |")
    print("|---|---:|---:|")
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {seconds:.2f} | {seconds / total:.0%} |")
    print("\n| top op | self CPU s | calls | share |")
    print("|---|---:|---:|---:|")
    for key, seconds, count in sorted(events, key=lambda e: -e[1])[:args.top]:
        print(f"| {key} | {seconds:.2f} | {count} | {seconds / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    mpnet = sub.add_parser("mpnet", help="real all-mpnet-base-v2: engine vs sentence-transformers and transformers")
    mpnet.add_argument("--systems", default=",".join(MPNET_SYSTEMS),
                       help=f"comma-separated subset of {','.join(MPNET_SYSTEMS)}")
    fallback = sub.add_parser("fallback", help="native packed body vs the transformers fallback, fp32 and bf16")
    fallback.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    prof = sub.add_parser("profile", help="torch profiler over the engine's MPNet embed, grouped by op")
    prof.add_argument("--dtype", default="bf16", choices=tuple(ENGINE_DTYPES), help="engine dtype")
    prof.add_argument("--top", type=int, default=12, help="how many single ops to list")
    for p, passages, model_help in (
            (mpnet, 3000, "all-mpnet-base-v2 folder (default: .models/all-mpnet-base-v2 from `make models`)"),
            (fallback, 3000, "model folder (default: the bundled all-MiniLM-L6-v2, a BertModel)"),
            (prof, 300, "all-mpnet-base-v2 folder (default: .models/all-mpnet-base-v2 from `make models`)")):
        p.add_argument("--model", default=None, help=model_help)
        p.add_argument("--passages", type=int, default=passages, help="number of real-text passages")
        p.add_argument("--max-length", type=int, default=384 if p is not fallback else None,
                       help="truncation length for every system (default: all-mpnet-base-v2's "
                            "max_seq_length 384; fallback: the folder's own)")
        p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, every system")
        p.add_argument("--batch-tokens", type=int, default=None, help="engine token budget per batch")
        if p is not prof:
            p.add_argument("--rounds", type=int, default=2, help="alternating timed rounds (best kept)")
        p.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bench == "profile":
        return bench_profile(args)
    if args.bench == "fallback":
        args.dtypes = args.dtypes.split(",")
        if set(args.dtypes) - set(ENGINE_DTYPES):
            parser.error(f"--dtypes {args.dtypes}: choose from {sorted(ENGINE_DTYPES)}")
        return bench_fallback(args)
    args.systems = args.systems.split(",")
    bad = set(args.systems) - set(MPNET_SYSTEMS)
    if bad:
        parser.error(f"unknown systems {sorted(bad)}; choose from {sorted(MPNET_SYSTEMS)}")
    bench_mpnet(args)


if __name__ == "__main__":
    main()
