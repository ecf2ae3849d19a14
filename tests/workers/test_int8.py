"""int8 weights (workers/quant/int8.py) on the bundled MiniLM against its float32 vectors on real text
the calibration never saw; the row kernel (int8_rows.cpp) and the fused BERT layers
(int8_bert.py) against naive int8 math and torch ops; fingerprint and refusals."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.inputs.samples import sample_passages
from tiny_models import cosines
from workers import Engine, EngineConfig
from workers.quant import int8
from workers.models.layers import LayerStack, LinearAct, LinearAdd
from workers.quant import int8_bert

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not int8.available(), reason="torch has no oneDNN int8 ops")


@pytest.fixture(scope="module")
def held_out():
    seen = set(int8.calibration_texts())
    return [t for t in sample_passages(160, seed=21, max_chars=1000) if t not in seen][:100]


@pytest.fixture(scope="module")
def quantized():
    return Engine(EngineConfig(dtype="bfloat16", quantization="int8"))


def test_int8_meets_the_quality_gate_on_held_out_text(quantized, held_out):
    ref = Engine(EngineConfig(dtype="float32")).embed(held_out)
    cos = cosines(quantized.embed(held_out), ref)
    assert len(held_out) == 100
    assert cos.min() >= 0.99, np.sort(cos)[:5]
    n_int8 = sum(isinstance(m, int8.Int8Linear) for m in quantized.model.modules())
    assert n_int8 == 6 * 4 - len(int8.KEEP_FLOAT)
    assert isinstance(quantized.model.encoder, int8_bert.Int8BertLayers)


def test_fused_bert_layers_match_the_int8_modules_run_one_by_one(quantized, held_out):
    """The fused flow (five row passes per layer) against the same Int8Linears each run on its
    own with torch's LayerNorm between them. They round differently (the fused flow quantizes
    float32 values, the modules bf16 ones), so each is int8 noise away from the other; both must
    be as close to float32 as each other (measured: min 0.9979, median 0.99897 on 300 passages)."""
    fused = quantized.model.encoder
    texts = held_out[:60]
    ref = Engine(EngineConfig(dtype="float32")).embed(texts)
    got = quantized.embed(texts)
    quantized.model.encoder = LayerStack(list(fused.layer))
    try:
        one_by_one = quantized.embed(texts)
    finally:
        quantized.model.encoder = fused
    assert cosines(got, one_by_one).min() >= 0.997
    fused_cos, modules_cos = cosines(got, ref), cosines(one_by_one, ref)
    assert abs(np.median(fused_cos) - np.median(modules_cos)) <= 2e-4, (np.median(fused_cos), np.median(modules_cos))
    assert fused_cos.min() >= 0.99 and np.median(fused_cos) >= 0.998


def test_int8_linear_matches_naive_int8_math():
    torch.manual_seed(0)
    lin = LinearAct(64, 96, "gelu")
    x = torch.randn(23, 64)
    x[:, 5] *= 30  # an outlier channel, as MiniLM has
    amax = x.abs().amax(0)
    q = int8.Int8Linear(lin, amax, torch.float32)
    # naive reference: the same recipe in plain float math
    s = amax.clamp(min=1e-5) ** 0.5 / lin.weight.abs().amax(0).clamp(min=1e-5) ** 0.5
    w = lin.weight * s
    ws = w.abs().amax(1) / 127
    wq = (w / ws[:, None]).round().clamp(-127, 127)
    xs = x * (1 / s)
    xsc = xs.abs().amax(1, keepdim=True) / 127
    xq = (xs * (1 / xsc)).round().clamp(-127, 127)
    ref = torch.nn.functional.gelu((xq @ wq.T) * xsc * ws + lin.bias)
    with torch.inference_mode():
        got = q(x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # and int8 is close to the float layer itself
    with torch.no_grad():
        assert cosines(got.numpy(), lin(x).numpy()).min() > 0.999


def test_quantization_is_in_the_fingerprint(quantized):
    fp = quantized.fingerprint()["quantization"]
    assert fp["method"] == "int8" and fp["alpha"] == int8.ALPHA
    assert fp["calibration"] == int8.calibration_hash(int8.calibration_texts())
    assert "quantization" not in Engine(EngineConfig(dtype="bfloat16")).fingerprint()


@pytest.mark.parametrize("kwargs, words", [
    ({"quantization": "int4"}, "choose one of [None, 'int8']"),
    ({"quantization": "int8", "device": "cuda"}, "CPU only"),
    ({"quantization": "int8", "task": "classify"}, "task='embed' only"),
    ({"quantization": "int8", "implementation": "transformers"}, "own model body"),
])
def test_bad_quantization_values_are_refused(kwargs, words):
    with pytest.raises(ValueError, match="quantization") as e:
        EngineConfig(**kwargs)
    assert words in str(e.value)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_kernel_matches_the_torch_steps(act, dtype):
    """Int8Linear through int8_rows.cpp against the same steps as torch ops (its fallback where
    no compiler is found): same quantized input, same finished output."""
    if int8.row_kernel() is None:
        pytest.skip("no C++ compiler: only the torch steps run here")
    torch.manual_seed(1)
    lin = LinearAdd(48, 80) if act is None else LinearAct(48, 80, act)
    x = torch.randn(37, 48)
    x[:, 3] *= 25
    residual = torch.randn(37, 80).to(dtype) if act is None else None
    q = int8.Int8Linear(lin, x.abs().amax(0), dtype)
    x = x.to(dtype)
    with torch.inference_mode():
        got = q(x, residual) if residual is not None else q(x)
        ref = q._forward_torch(x, residual)
    assert got.dtype == dtype
    # erf/tanh to ~2e-7 in the kernel; in bf16, one rounding step of the output at most
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.02, rtol=0.01)
    torch.testing.assert_close(got.float(), ref.float(), **tol)


def test_row_pass_layernorm_and_quantize_against_torch():
    """One pass: scale, bias, GELU, residual, LayerNorm, bf16 out and the next linear's uint8
    input with per-token scales, each against torch's own op."""
    if int8.row_kernel() is None:
        pytest.skip("no C++ compiler: the fused row pass does not run here")
    torch.manual_seed(2)
    T, n = 29, 72                                       # n not a multiple of 16: the tail path
    y, row_scale, bias = torch.randn(T, n), torch.rand(T) + 0.5, torch.randn(n)
    residual = torch.randn(T, n).bfloat16()
    ln = torch.nn.LayerNorm(n, eps=1e-12)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-0.2, 0.2)
    inv_s = torch.rand(n) + 0.5
    out, (q, scale) = int8.rows(y, row_scale=row_scale, bias=bias, act=1, residual=residual,
                                norm=(ln.weight.detach(), ln.bias.detach(), ln.eps),
                                out_dtype=torch.bfloat16, quantize_with=inv_s)
    with torch.no_grad():
        t = ln(torch.nn.functional.gelu(y * row_scale[:, None] + bias) + residual.float())
    torch.testing.assert_close(out.float(), t.bfloat16().float(), atol=0.02, rtol=0.01)
    ts = t * inv_s
    want_scale = ts.abs().amax(1) / 127
    torch.testing.assert_close(scale, want_scale, atol=1e-6, rtol=1e-5)
    want_q = (ts * (1 / want_scale[:, None])).round().clamp(-127, 127) + 128
    assert (q.int() - want_q.int()).abs().max() <= 1  # a value at .5 may round either way
    assert (q.int() != want_q.int()).float().mean() < 0.01


def test_without_a_compiler_int8_says_so_and_runs_the_torch_steps(tmp_path):
    """No C++ compiler: the row kernel is unavailable (one warning naming why) and Int8Linear
    runs its torch steps (`fuse_bert_layers` then keeps the modules); the same numbers as the
    kernel path's here."""
    code = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO)
from workers.quant import int8
from workers.models.layers import LinearAct
torch.manual_seed(1)
lin = LinearAct(48, 80, "gelu")
x = torch.randn(37, 48)
q = int8.Int8Linear(lin, x.abs().amax(0), torch.float32)
with torch.inference_mode():
    torch.save(q(x), sys.argv[1])
print(int8.row_kernel() is None)
"""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               PREFILL_EMBED_KERNEL_CACHE=str(tmp_path / "kernels"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "y.pt")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"]
    assert proc.stderr.count("row kernel unavailable") == 1 and "no-such-compiler" in proc.stderr
    torch.manual_seed(1)
    lin = LinearAct(48, 80, "gelu")
    x = torch.randn(37, 48)
    q = int8.Int8Linear(lin, x.abs().amax(0), torch.float32)
    with torch.inference_mode():
        want = q(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flags, path", [("fpu avx2 avx512f avx512_vnni avx512_bf16", "AVX512-VNNI"),
                                         ("fpu avx512_vnni amx_bf16 amx_int8 amx_tile", "AMX int8 tiles"),
                                         ("fpu avx2 avx_vnni", "AVX-VNNI (256-bit)"),
                                         ("fpu sse4_2 avx2 fma", None)])
def test_the_cpu_int8_path_is_named_and_its_absence_warned(flags, path):
    got, note = int8.cpu_path(flags)
    assert got == path
    assert ("no int8 dot-product instructions" in note) == (path is None)
