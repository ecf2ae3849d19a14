"""The benchmark scripts run end to end and print their tables (smoke tests; no timings asserted),
and the shared helpers count what they claim to."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the tests import the helper module the scripts use

import benchlib  # noqa: E402


def _run(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, check=True).stdout


def test_flops_per_token_counts_linears_and_attention():
    cfg = BertConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    # Per layer: qkv 64x192, out 64x64, ffn 64x256 and 256x64 -> 2 * 49152 FLOPs per token.
    linear = 2 * 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)
    # Two sequences of 10 and 30 tokens: mean context (100 + 900) / 40 = 25.
    assert benchlib.flops_per_token(cfg, np.array([10, 30])) == linear + 4 * 2 * 64 * 25


def test_decoder_shapes_use_kv_heads_and_gated_mlp():
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    assert benchlib.linear_shapes(cfg, 8) == [(8, 64, 64 + 2 * 32), (8, 64, 64), (8, 64, 256), (8, 128, 64)]


def test_cosines_and_ceiling():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(benchlib.cosines(a, np.array([[2.0, 0.0], [-1.0, -1.0]])), [1.0, -1.0])
    assert benchlib.matmul_ceiling([(32, 16, 8)], torch.float32, reps=2) > 0
    assert "cores" in benchlib.machine()


@pytest.mark.slow
def test_bench_engine_prints_the_table():
    out = _run("bench_engine.py", "engine", "--passages", "40", "--systems", "engine-fp32,st-fp32")
    assert "| system | tokens/s | vs st-fp32 |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"engine-fp32", "st-fp32"}
    cosine = float(rows["engine-fp32"].split("|")[5])
    assert cosine >= 0.99999  # the same vectors as sentence-transformers


@pytest.mark.slow
def test_bench_decoder_prints_the_table():
    out = _run("bench_decoder.py", "--passages", "8", "--layers", "1", "--max-length", "64", "--rounds", "1",
               "--dtype", "float32")
    assert "| system | tokens/s | vs hf-padded |" in out
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert rows >= {"engine-fp32", "hf-padded-fp32"}
    cosine = float(out.split("min cosine engine vs transformers:")[1].split()[0])
    assert cosine >= 0.999, out


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu_passes():
    """The GPU check's CPU mode: every case runs in both loops and dtypes and matches CPU fp32."""
    out = _run("gpu_check.py", "--shapes", "tiny", "--passages", "12", "--check", "8")
    assert "gpu check: PASS" in out, out
    cases = ("embed/bert", "embed/xlm-roberta", "embed/qwen3-gqa", "embed/qwen3-bidirectional",
             "embed/mpnet-bias", "embed/distilbert", "embed/modernbert-window",
             "embed/gemma3-bidirectional-window",
             "score/bert-cross-encoder", "score/xlm-roberta-cross-encoder", "classify/bert",
             "score/qwen3-reranker")
    for case in cases:
        assert f"\n{case} (" in out
    rows = [line for line in out.splitlines() if line.startswith(("| fp32 | sdpa |", "| bf16 | sdpa |"))]
    assert len(rows) == len(cases) * 2 * 2 and not any("FAIL" in r for r in rows)


def test_bench_int8_prints_the_table_and_the_gate():
    out = _run("bench_int8.py", "--passages", "20", "--rounds", "1", "--systems", "bf16-packed,int8")
    assert "| bf16-packed |" in out and "| int8 |" in out
    assert "int8 vs fp32: min cosine" in out and "top-10 overlap" in out
