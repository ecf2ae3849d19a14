"""Decoder benchmark: this engine vs plain transformers (padded) on a random ~0.5B Qwen2-shaped
model on the CPU (bfloat16 where the CPU multiplies it natively, else float32; `--dtype`), same
real texts, one run.

    python benchmarks/bench_decoder.py                        # 64 passages, max length 256, 24 layers
    python benchmarks/bench_decoder.py --passages 300 --layers 4 --rounds 1

The model has Qwen2-0.5B's shapes (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate
4864, q/k/v bias) with random weights. No Qwen tokenizer ships offline, so a byte-level BPE is
trained here in a few seconds on other sample passages (~16k ids; like Qwen's: no BOS, no EOS)
and the vocabulary is shrunk to 32,768 (Qwen2: 151,936): that only changes an embedding lookup,
not the FLOPs per token. The texts are a fixed random subset of the same 300 real passages.
transformers runs padded batches of 16 in input order with last-token pooling (what a plain
script does); the engine packs by token budget. The two run alternately, best of `--rounds`,
so a burst of load from other processes does not land on one system only. Prints one table:
tokens/s, ratio, the share of the bf16 matmul ceiling measured here at the model's shapes, and
the worst cosine between the two systems' vectors.

Sizing: the full model costs ~0.75 GFLOP/token; at the ~180-400 GFLOP/s a shared 2-core EPYC
gives in bf16 that is only 150-400 tokens/s, and transformers pads its batches to ~2x the real
tokens. The defaults (64 of the 300 passages, all 24 layers, 2 rounds) keep a run near 4
minutes; `--passages 300 --layers 4 --rounds 1` covers all texts at a sixth of the depth
(throughput scales ~1/layers).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchlib import alternating_rounds, flops_per_token, linear_shapes, machine, matmul_ceiling, min_cosine, sample_passages
from workers import Engine, EngineConfig

VOCAB = 32768


def write_tokenizer(folder: Path) -> None:
    """A Qwen-like byte-level BPE trained on sample passages (not the benchmark's own)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample_passages(2000, seed=1), trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "model_max_length": 32768}))


def write_model(folder: Path, layers: int) -> None:
    """A random Qwen2-0.5B-shaped model saved as bf16 safetensors, plus a trained tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModel, Qwen2Config
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=896, num_hidden_layers=layers,
                      num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                      max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False,
                      architectures=["Qwen2Model"])
    torch.manual_seed(0)
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    tensors = {name: (torch.randn(p.shape) * 0.02).to(torch.bfloat16)
               for name, p in model.state_dict().items()}
    for name in tensors:
        if "norm" in name:
            tensors[name] = torch.ones_like(tensors[name])
    cfg.save_pretrained(folder)
    save_file(tensors, str(folder / "model.safetensors"))
    write_tokenizer(folder)


def make_engine(folder: Path, args):
    engine = Engine(EngineConfig(model=str(folder), dtype=args.dtype, max_length=args.max_length,
                                 num_threads=args.threads, normalize=False))
    return engine.embed


def make_hf_padded(folder: Path, args):
    """transformers: padded batches of 16 in input order (right padding), last real token."""
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=getattr(torch, args.dtype),
                                      attn_implementation="sdpa").eval()

    def encode(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=args.max_length,
                  return_tensors="pt", return_token_type_ids=False)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state                      # (b, L, hidden)
        last = enc["attention_mask"].sum(1) - 1
        return hidden[torch.arange(len(batch)), last].float().numpy()

    return lambda texts: np.concatenate([encode(texts[i:i + 16]) for i in range(0, len(texts), 16)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=64, help="number of real-text passages")
    parser.add_argument("--max-length", type=int, default=256, help="truncation length for both systems")
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2-0.5B: 24)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                        help="auto: bfloat16 on CPUs with AMX/AVX512-BF16, else float32 (bf16 is "
                             "emulated and ~50x slower there)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds (best kept)")
    args = parser.parse_args()
    if args.dtype == "auto":
        from workers.engine.platform import cpu_has_fast_bf16
        args.dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
    args.short = {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]
    torch.set_num_threads(args.threads)
    corpus = sample_passages(300, seed=0)
    texts = random.Random(0).sample(corpus, min(args.passages, len(corpus)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder, args.layers)
        systems = {f"engine-{args.short}": make_engine(folder, args),
                   f"hf-padded-{args.short}": make_hf_padded(folder, args)}
        results = alternating_rounds(systems, texts, args.rounds)
        probe = Engine(EngineConfig(model=str(folder), dtype=args.dtype, max_length=args.max_length))
        lengths = np.array([len(ids) for ids in probe.processor(texts).ids])
        cfg = probe.folder.hf_config
    print_table(args, cfg, texts, lengths, results)


def print_table(args, cfg, texts, lengths, results) -> None:
    tokens = int(lengths.sum())
    fpt = flops_per_token(cfg, lengths)
    ceiling = matmul_ceiling(linear_shapes(cfg, 1024), getattr(torch, args.dtype), reps=2)
    print(f"\nmachine: {machine(args.threads)}")
    print(f"corpus: {len(texts)} passages, {tokens:,} tokens after truncation at {args.max_length} "
          f"(median {int(np.median(lengths))}, max {lengths.max()})")
    print(f"model: random Qwen2-0.5B shape, {args.layers} layers, {fpt / 1e9:.2f} GFLOP/token "
          f"(linears + attention at these lengths); best of {args.rounds} alternating rounds; "
          f"{args.short} matmul ceiling at its shapes {ceiling / 1e9:,.0f} GFLOP/s")
    base = results[f"hf-padded-{args.short}"][1]
    cos = min_cosine(results[f"engine-{args.short}"][0], results[f"hf-padded-{args.short}"][0])
    print(f"\n| system | tokens/s | vs hf-padded | % of {args.short} matmul ceiling |")
    print("|---|---:|---:|---:|")
    for name, (_, seconds) in results.items():
        rate = tokens / seconds
        print(f"| {name} | {rate:,.0f} | {base / seconds:.2f}x | {rate * fpt / ceiling:.0%} |")
    print(f"\nmin cosine engine vs transformers: {cos:.5f}")


if __name__ == "__main__":
    main()
