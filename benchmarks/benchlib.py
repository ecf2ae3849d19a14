"""What every benchmark shares: the machine's description, matmul ceilings at a model's shapes,
FLOP counts, best-of-N timing, cosines, and the sample corpus.

Benchmarks are scripts in this folder (`python benchmarks/<name>.py`); Python puts the script's
folder first on `sys.path`, so `import benchlib` needs no path edits. The project's own packages
come from the install (`make setup`), or from `PYTHONPATH=.` where nothing is installed (the GPU
machine, see gpu.sh). Nothing here imports ray or pyarrow, so the GPU check runs with only
torch, transformers and sentence-transformers.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def write_random_folder(cfg, folder: Path, tokenizer: Path, perturb: bool = True) -> Path:
    """Save a random-weight model for the HF config `cfg` (its `architectures[0]` picks the
    transformers class: *ForSequenceClassification, *ForCausalLM, else the bare model) as a
    folder with safetensors weights and the tokenizer files found in `tokenizer`. `perturb`
    shifts norms and biases off their init, so a mis-loaded tensor shows in a parity check."""
    import shutil

    import transformers
    from safetensors.torch import save_file
    auto = {"ForSequenceClassification": transformers.AutoModelForSequenceClassification,
            "ForCausalLM": transformers.AutoModelForCausalLM}
    arch = cfg.architectures[0]
    cls = next((c for suffix, c in auto.items() if arch.endswith(suffix)), transformers.AutoModel)
    torch.manual_seed(0)
    model = cls.from_config(cfg)
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name.lower():
                    p.add_(torch.randn_like(p) * 0.1)
    folder.mkdir(parents=True)
    cfg.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith(("position_ids", "token_type_ids"))}, str(folder / "model.safetensors"))
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder


def sample_passages(n: int, seed: int = 0, **kwargs) -> list[str]:
    """Real-text passages from the standard library's docstrings (see pipeline/inputs/samples.py).

    Loaded by file path so that the `pipeline` package (ray, pyarrow) is not imported."""
    spec = importlib.util.spec_from_file_location("_samples", ROOT / "pipeline" / "inputs" / "samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sample_passages(n, seed=seed, **kwargs)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    """The matmul-relevant ISA extensions this CPU has (amx, avx512 bf16/vnni, avx2)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "?"
    wanted = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")
    return ",".join(f for f in wanted if f in flags) or "none of amx/avx512/avx2"


def machine(threads: int | None = None) -> str:
    """One line naming the machine a table was measured on."""
    line = f"{cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores"
    if torch.cuda.is_available():
        line = f"{torch.cuda.get_device_name()}; host {line}"
    line += f", torch {torch.__version__}"
    return line + (f", {threads} threads" if threads else "")


class CpuAccount:
    """Where the machine's CPU time went between `start()` and `report()`: the share of the
    cores the hypervisor stole (/proc/stat), and core-seconds per process, grouped by command
    (Ray workers and daemons by their process titles). Linux only; empty elsewhere."""

    def start(self) -> "CpuAccount":
        self.t0, self.stat0, self.procs0 = time.perf_counter(), _stat(), _procs()
        return self

    def report(self, top: int = 6) -> str:
        wall, stat1, procs1 = time.perf_counter() - self.t0, _stat(), _procs()
        if not stat1 or not self.stat0:
            return "cpu account: /proc not readable here"
        ticks = [b - a for a, b in zip(self.stat0, stat1)]
        steal = ticks[7] / max(1, sum(ticks[:8]))
        hz = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for pid, (name, t1) in procs1.items():
            t0 = self.procs0.get(pid, (name, 0))[1]
            used[name] = used.get(name, 0.0) + (t1 - t0) / hz
        busiest = sorted(used.items(), key=lambda kv: -kv[1])[:top]
        cores = os.cpu_count() or 1
        return (f"cpu over {wall:.0f} s x {cores} cores: steal {steal:.1%}; core-seconds by process: "
                + ", ".join(f"{name} {sec:.1f}" for name, sec in busiest if sec >= 0.05))


def _stat() -> list[int]:
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except OSError:
        return []


def _procs() -> dict[int, tuple[str, int]]:
    """pid -> (command label, utime + stime ticks) of every process readable now."""
    out = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        label = cmd if cmd.startswith("ray::") else os.path.basename(cmd.split(" ")[0]) or "?"
        out[int(entry)] = (label[:40], int(fields[11]) + int(fields[12]))
    return out


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(shapes: Iterable[tuple[int, int, int]], dtype: torch.dtype,
                   device: torch.device | str = "cpu", reps: int = 8) -> float:
    """FLOP/s of torch's linear at (M, K, N) shapes, weighted by their FLOPs (one warm-up each)."""
    total_flops, total_s = 0.0, 0.0
    for M, K, N in shapes:
        x = torch.randn(M, K, dtype=dtype, device=device)
        w = torch.randn(N, K, dtype=dtype, device=device)
        torch.nn.functional.linear(x, w)
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        sync(device)
        total_s += time.perf_counter() - t
        total_flops += 2.0 * M * K * N * reps
    return total_flops / total_s


def linear_shapes(cfg, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of one layer's linears for an HF config (BERT family or a gated decoder)."""
    h, f = cfg.hidden_size, getattr(cfg, "intermediate_size", None) or cfg.hidden_dim  # DistilBERT: hidden_dim
    heads = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or h // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if _gated(cfg):
        return [(tokens, h, (heads + 2 * kv) * d), (tokens, heads * d, h),
                (tokens, h, 2 * f), (tokens, f, h)]
    return [(tokens, h, 3 * h), (tokens, h, h), (tokens, h, f), (tokens, f, h)]


def flops_per_token(cfg, lengths: np.ndarray) -> float:
    """Forward FLOPs per token: every layer's linears plus attention (QKᵀ and PV) at these
    sequence lengths (a token attends to its whole sequence, bidirectional or not)."""
    linear = 2 * sum(k * n for _, k, n in linear_shapes(cfg, 1)) * cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    lengths = np.asarray(lengths, dtype=np.float64)
    mean_context = float((lengths ** 2).sum() / lengths.sum())
    return linear + 4 * cfg.num_hidden_layers * heads * d * mean_context


def _gated(cfg) -> bool:
    return getattr(cfg, "model_type", "") in {"qwen2", "qwen3", "llama", "mistral", "gemma3_text", "modernbert"}


def best_of(fn: Callable[[], object], rounds: int, device: torch.device | str = "cpu"):
    """(result of the fastest call, its seconds) over `rounds` calls, after one warm-up call."""
    fn()
    best, out = float("inf"), None
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        result = fn()
        sync(device)
        seconds = time.perf_counter() - t
        if seconds < best:
            best, out = seconds, result
    return out, best


def alternating_rounds(systems: dict[str, Callable[[list[str]], np.ndarray]], texts: list[str],
                       rounds: int, every_round: dict[str, list[float]] | None = None
                       ) -> dict[str, tuple[np.ndarray, float]]:
    """Warm every system up, then time them in turn, round after round (so drift in the
    machine's speed hits all alike); keep each one's best round: name -> (vectors, seconds).
    `every_round`, when given, receives each system's seconds of every round in order."""
    for fn in systems.values():
        fn(texts[:2])
    results: dict[str, tuple[np.ndarray, float]] = {}
    for r in range(rounds):
        for name, fn in systems.items():
            t = time.perf_counter()
            vectors = fn(texts)
            seconds = time.perf_counter() - t
            print(f"  round {r + 1}: {name:20s} {seconds:.2f} s", flush=True)
            if every_round is not None:
                every_round.setdefault(name, []).append(seconds)
            if name not in results or seconds < results[name][1]:
                results[name] = (vectors, seconds)
    return results


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosines(a, b).min())


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: the module doc's first paragraph as description, its
    `python ...` lines as the examples."""
    return argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(ln for ln in doc.splitlines() if ln.strip().startswith("python")))
