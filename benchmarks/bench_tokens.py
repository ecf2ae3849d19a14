"""Token-level outputs (issue 13): the engine vs sentence-transformers' SparseEncoder (SPLADE) and
MultiVectorEncoder (ColBERT), fp32 and bf16, in one run.

    python benchmarks/bench_tokens.py                          # 1,000 passages, both heads, 2 rounds
    python benchmarks/bench_tokens.py --passages 300 --rounds 1 --heads splade
    python benchmarks/bench_tokens.py --passages 6 --layers 1 --max-length 32 --rounds 1   # smoke

No SPLADE or ColBERT weights ship with the project, so both folders are built here in a
temporary folder from the bundled all-MiniLM-L6-v2's real encoder weights (`--layers N` keeps
only its first N layers, for a smoke run):
- SPLADE: a `BertForMaskedLM` whose MLM head (dense + GELU + LayerNorm transform, decoder tied
  to the word embeddings) MiniLM lacks, so the transform is initialised randomly (seed) and the
  decoder bias set to a constant that keeps the output sparse; saved as safetensors under a
  SparseEncoder (fill-mask Transformer -> SpladePooling, max + relu) by sentence-transformers.
- ColBERT: a MultiVectorEncoder (Transformer -> token Dense 384 -> 128 (random, seed) ->
  punctuation skip-list -> Normalize, "[Q] "/"[D] " markers) saved by sentence-transformers;
  passages are encoded as documents.

Every system encodes the same passages, truncated at the same max length; the rounds alternate
the systems (benchlib.alternating_rounds) and the best round counts. A peer's time is its
`encode` call alone (its sparse COO tensor is turned into arrays after the clock stops); the
engine's includes building its (indices, values) / per-passage arrays. Tokens are counted once,
by the engine's tokenizer (markers included). Prints tokens/s, the ratio to the peer in bf16
and fp32, parity against the peer in fp32 (SPLADE: rows whose indices equal, max abs diff of
the values over the union of indices; ColBERT: min per-token cosine) and the output bytes per
passage: token vectors in float16 and float32 (+ the int32 token count), the sparse indices
(int32) + values (float32), and one dense 384-d float32 vector for comparison (raw payload,
before parquet's compression).
"""
from __future__ import annotations

import argparse
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchlib import DTYPES, alternating_rounds, cosines, machine, parser, sample_passages
from workers import Engine, EngineConfig
from workers.loading.model_folder import default_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
COLBERT_DIM = 128
QUERY_LENGTH = 32


def _minilm_base(folder: Path, layers: int | None) -> Path:
    """MiniLM's encoder as a plain BertModel folder (first `layers` layers) with its tokenizer."""
    from transformers import BertModel
    source = default_model_path()
    kwargs = {"num_hidden_layers": layers} if layers else {}
    BertModel.from_pretrained(str(source), **kwargs).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


def build_splade(folder: Path, base: Path, max_length: int, seed: int, bias: float):
    """MiniLM encoder + a random MLM transform (decoder tied to the real word embeddings) as a
    SparseEncoder folder; returns the folder."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertForMaskedLM
    from transformers.utils import logging
    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "cls.predictions.* newly initialized" is the point here
    mlm = BertForMaskedLM.from_pretrained(str(base)).eval()
    logging.set_verbosity(verbosity)
    with torch.no_grad():
        transform = mlm.cls.predictions.transform
        torch.nn.init.normal_(transform.dense.weight, std=mlm.config.initializer_range)
        transform.dense.bias.zero_()
        mlm.cls.predictions.bias.fill_(bias)  # most logits negative: a sparse output
    mlm_folder = folder.parent / (folder.name + "-mlm")
    mlm.save_pretrained(mlm_folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(base / name, mlm_folder / name)
    transformer = Transformer(str(mlm_folder), transformer_task="fill-mask")
    transformer.max_seq_length = max_length
    SparseEncoder(modules=[transformer, SpladePooling()], device="cpu").save(str(folder))
    return folder


def build_colbert(folder: Path, base: Path, max_length: int, seed: int):
    """MiniLM encoder + a random 384 -> 128 token projection as a MultiVectorEncoder folder."""
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    transformer = Transformer(str(base), query_length=QUERY_LENGTH, document_length=max_length)
    torch.manual_seed(seed)
    dense = Dense(transformer.get_embedding_dimension(), COLBERT_DIM, bias=False,
                  activation_function=torch.nn.Identity(), module_input_name="token_embeddings")
    MultiVectorEncoder(
        modules=[transformer, dense, MultiVectorMask(skiplist_words=list(string.punctuation)),
                 Normalize(module_input_name="token_embeddings")],
        prompts={"query": "[Q] ", "document": "[D] "}, device="cpu").save(str(folder))
    return folder


# --- systems: name -> a function of the texts; its result is turned into arrays by `as_arrays`


def engine_system(head: str, folder: Path, dtype: str, args):
    task = "sparse" if head == "splade" else "tokens"
    engine = Engine(EngineConfig(model=str(folder), task=task, dtype=dtype, max_length=args.max_length,
                                 num_threads=args.threads))
    return engine.embed_sparse if head == "splade" else engine.embed_tokens


def peer_system(head: str, folder: Path, dtype: str, args):
    from sentence_transformers import MultiVectorEncoder, SparseEncoder
    if head == "splade":
        model = SparseEncoder(str(folder), device="cpu").to(DTYPES[dtype])
        return lambda texts: model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
    model = MultiVectorEncoder(str(folder), device="cpu").to(DTYPES[dtype])
    return lambda texts: model.encode_document(texts, batch_size=args.batch_size, show_progress_bar=False)


def as_arrays(head: str, out) -> list:
    """A system's output as the engine's layout: [(indices int32, values float32)] or [(L, d) float32]."""
    if head == "splade":
        if isinstance(out, list) and out and isinstance(out[0], tuple):
            return out
        rows = []
        for row in out:
            row = row.coalesce()
            rows.append((row.indices()[0].numpy().astype(np.int32), row.values().float().numpy()))
        return rows
    return [np.asarray(t.float().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float32) for t in out]


def parity(head: str, got: list, want: list) -> tuple[str, str]:
    """SPLADE: (rows with equal indices, max abs diff over the union of indices);
    ColBERT: (rows with equal token counts, min per-token cosine over those rows)."""
    if head == "splade":
        same, worst = 0, 0.0
        for (gi, gv), (wi, wv) in zip(got, want):
            same += int(np.array_equal(gi, wi))
            union = np.union1d(gi, wi)
            g, w = np.zeros(len(union)), np.zeros(len(union))
            g[np.searchsorted(union, gi)], w[np.searchsorted(union, wi)] = gv, wv
            worst = max(worst, float(np.abs(g - w).max(initial=0.0)))
        return f"{same}/{len(want)} same indices", f"max abs diff {worst:.1e}"
    same = [(g, w) for g, w in zip(got, want) if g.shape == w.shape]
    cos = min((float(cosines(g, w).min()) for g, w in same if len(g)), default=float("nan"))
    return f"{len(same)}/{len(want)} same token counts", f"min token cosine {cos:.6f}"


def output_bytes(head: str, rows: list) -> dict[str, float]:
    """Mean payload bytes per passage of this head's output."""
    if head == "splade":
        return {"sparse int32 indices + float32 values": float(np.mean([len(i) * 8 for i, _ in rows]))}
    tokens = float(np.mean([len(r) for r in rows]))
    dim = rows[0].shape[1]
    return {f"{dim}-d float16 tokens + int32 count": tokens * dim * 2 + 4,
            f"{dim}-d float32 tokens + int32 count": tokens * dim * 4 + 4}


def bench_head(head: str, folder: Path, texts: list[str], args) -> tuple[dict, dict, int]:
    """Runs the head's four systems in alternating rounds; returns (results, bytes, tokens)."""
    probe = Engine(EngineConfig(model=str(folder), task="sparse" if head == "splade" else "tokens",
                                dtype="float32", max_length=args.max_length))
    tokens = int(sum(len(ids) for ids in probe.processor(texts).ids))
    peer = "st-sparse" if head == "splade" else "st-multivector"
    systems = {}
    for dtype in args.dtypes:
        systems[f"engine-{dtype}"] = engine_system(head, folder, {"fp32": "float32", "bf16": "bfloat16"}[dtype], args)
        systems[f"{peer}-{dtype}"] = peer_system(head, folder, dtype, args)
    print(f"\n{head}: {len(texts):,} passages, {tokens:,} tokens", flush=True)
    raw = alternating_rounds(systems, texts, args.rounds)
    results = {name: (as_arrays(head, out), seconds) for name, (out, seconds) in raw.items()}
    reference = results.get(f"{peer}-fp32", (None,))[0]
    sizes = output_bytes(head, reference if reference is not None else next(iter(results.values()))[0])
    return {"peer": peer, "results": results, "reference": reference}, sizes, tokens


def print_table(head: str, run: dict, tokens: int) -> None:
    peer, results, reference = run["peer"], run["results"], run["reference"]
    rate = {name: tokens / seconds for name, (_, seconds) in results.items()}
    print(f"\n{head} ({peer} is sentence-transformers):")
    print(f"| system | tokens/s | vs {peer}-bf16 | vs {peer}-fp32 | rows vs {peer}-fp32 | parity vs {peer}-fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (rows, _) in results.items():
        ratios = [f"{rate[name] / rate[r]:.2f}x" if r in rate else "-" for r in (f"{peer}-bf16", f"{peer}-fp32")]
        rows_ok, diff = parity(head, rows, reference) if reference is not None else ("-", "-")
        print(f"| {name} | {rate[name]:,.0f} | {ratios[0]} | {ratios[1]} | {rows_ok} | {diff} |")
    for dtype in ("bf16", "fp32"):
        if f"engine-{dtype}" in rate and f"{peer}-{dtype}" in rate:
            print(f"engine-{dtype} vs {peer}-{dtype}: {rate[f'engine-{dtype}'] / rate[f'{peer}-{dtype}']:.2f}x"
                  + (" (issue 13 goal: >= 1.6x)" if dtype == "bf16" else ""))
    engines = [n for n in rate if n.startswith("engine")]
    if engines and f"{peer}-bf16" in rate:
        best = max(engines, key=rate.get)
        print(f"best engine ({best}) vs {peer}-bf16: {rate[best] / rate[f'{peer}-bf16']:.2f}x")


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("bench_tokens.py", __doc__)
    p.add_argument("--passages", type=int, default=1000, help="real-text passages (default: 1,000)")
    p.add_argument("--heads", default="splade,colbert", help="comma-separated subset of splade,colbert")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per system; the best counts (default: 2)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per passage after truncation (default: 256)")
    p.add_argument("--batch-size", type=int, default=32, help="sentence-transformers batch size (default: 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--layers", type=int, default=None, help="keep MiniLM's first N layers (default: all 6)")
    p.add_argument("--splade-bias", type=float, default=-4.0,
                   help="the SPLADE decoder bias: lower is sparser (default: -4.0)")
    p.add_argument("--seed", type=int, default=0, help="corpus sample and random head seed (default: 0)")
    args = p.parse_args(argv)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if set(args.heads) - {"splade", "colbert"} or not args.heads:
        p.error(f"--heads {','.join(args.heads)!r}: choose from splade,colbert")
    if set(args.dtypes) - {"fp32", "bf16"} or not args.dtypes:
        p.error(f"--dtypes {','.join(args.dtypes)!r}: choose from fp32,bf16")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = sample_passages(args.passages, seed=args.seed)
    print(f"machine: {machine(args.threads)}")
    print(f"model: all-MiniLM-L6-v2 encoder ({args.layers or 6} layers, real weights) under a random "
          f"SPLADE MLM head / ColBERT {COLBERT_DIM}-d projection; max_length {args.max_length}; "
          f"{args.rounds} round(s), best counts")
    sizes: dict[str, float] = {"dense 384-d float32 vector (for comparison)": 384 * 4.0}
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        base = _minilm_base(Path(tmp) / "minilm", args.layers)
        runs = {}
        for head in args.heads:
            folder = Path(tmp) / head
            if head == "splade":
                build_splade(folder, base, args.max_length, args.seed, args.splade_bias)
            else:
                build_colbert(folder, base, args.max_length, args.seed)
            run, head_sizes, tokens = bench_head(head, folder, texts, args)
            runs[head] = (run, tokens)
            sizes.update(head_sizes)
    for head, (run, tokens) in runs.items():
        print_table(head, run, tokens)
    print("\n| output | bytes per passage |")
    print("|---|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size:,.0f} |")


if __name__ == "__main__":
    main()
