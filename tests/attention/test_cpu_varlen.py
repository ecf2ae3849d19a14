"""The CPU varlen attention kernel (attention/cpu_varlen.cpp) against the naive reference.

Every bf16 path is checked where this CPU has it (fp32 FMAs always; vdpbf16ps dot products
with AVX512-BF16; AMX tiles with AMX), whichever one the process would pick.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attention import BACKENDS, AttentionMetadata
from attention.cpu_varlen import CpuVarlenAttention, bf16_paths, load

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(load()[1] is not None, reason=f"cpu_varlen not built: {load()[1]}")


def _batch(lens, heads, kv_heads, dim, dtype, seed=0):
    """q, k, v as strided views of one fused (T, H + 2 Hkv, D) projection, as the models pass them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lens), heads + 2 * kv_heads, dim, generator=g).to(dtype)
    q, k, v = qkv[:, :heads], qkv[:, heads:heads + kv_heads], qkv[:, heads + kv_heads:]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    return q, k, v, cu


def _meta(lens, cu, causal):
    return AttentionMetadata(cu_seqlens=cu, max_seqlen=max(lens), seqlens=list(lens), causal=causal)


def _modes(dtype):
    """Every path this build can run here for `dtype` (bf16: fp32 FMAs, vdpbf16ps, AMX tiles)."""
    return bf16_paths() if dtype == torch.bfloat16 else ["fma"]


def _check(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    else:
        o, r = out.float().flatten(1), ref.float().flatten(1)
        cos = torch.nn.functional.cosine_similarity(o, r, dim=-1)
        assert cos.min() >= 0.999, cos.min()
        torch.testing.assert_close(o, r, atol=2e-2, rtol=2e-2)


LENGTHS = [[1], [5, 1, 33, 17, 2, 64, 9, 40, 3], list(range(1, 40)), [300, 7, 129]]


@pytest.mark.parametrize("lens", LENGTHS)
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 4, 16), (12, 12, 32), (6, 2, 64), (2, 1, 128)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_naive(lens, heads, kv_heads, dim, causal, dtype):
    q, k, v, cu = _batch(lens, heads, kv_heads, dim, dtype)
    ref = BACKENDS["naive"](CPU, dtype).forward(q, k, v, _meta(lens, cu, causal))
    for dot in _modes(dtype):
        backend = CpuVarlenAttention(CPU, dtype)
        backend.bf16_path = dot
        _check(backend.forward(q, k, v, backend.prepare(_meta(lens, cu, causal))), ref, dtype)


@pytest.mark.parametrize("window", [(8, 8), (3, 5), (0, 0), (40, 2), (5, -1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_matches_naive(window, causal, dtype):
    lens = [1, 9, 33, 70, 17]
    q, k, v, cu = _batch(lens, 4, 2, 32, dtype, seed=1)
    ref = BACKENDS["naive"](CPU, dtype).forward(q, k, v, _meta(lens, cu, causal), window=window)
    for dot in _modes(dtype):
        backend = CpuVarlenAttention(CPU, dtype)
        backend.bf16_path = dot
        _check(backend.forward(q, k, v, _meta(lens, cu, causal), window=window), ref, dtype)


def test_threads_do_not_change_the_result():
    lens = [50, 3, 200, 17, 90]
    q, k, v, cu = _batch(lens, 12, 12, 32, torch.float32, seed=2)
    backend = CpuVarlenAttention(CPU, torch.float32)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(backend.forward(q, k, v, _meta(lens, cu, False)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_other_head_dims_and_a_bias_go_to_sdpa_once_with_the_reason(caplog):
    lens = [4, 11, 6]
    q, k, v, cu = _batch(lens, 4, 4, 24, torch.float32)  # 24: not a multiple of 16
    backend = CpuVarlenAttention(CPU, torch.float32)
    with caplog.at_level("WARNING"):
        out = backend.forward(q, k, v, _meta(lens, cu, False))
        backend.forward(q, k, v, _meta(lens, cu, False))
    torch.testing.assert_close(out, BACKENDS["naive"](CPU, torch.float32).forward(
        q, k, v, _meta(lens, cu, False)), atol=1e-5, rtol=1e-5)
    lines = [r.message for r in caplog.records if "cpu_varlen" in r.message]
    assert len(lines) == 1 and "head dim 24" in lines[0] and "SDPA" in lines[0]

    q, k, v, cu = _batch(lens, 4, 4, 32, torch.float32)
    g = torch.Generator().manual_seed(3)
    biases = [torch.randn(4, n, n, generator=g) for n in lens]
    meta = _meta(lens, cu, False).with_bias(lambda i: biases[i])
    ref = BACKENDS["naive"](CPU, torch.float32).forward(q, k, v, meta)
    torch.testing.assert_close(backend.forward(q, k, v, meta), ref, atol=1e-5, rtol=1e-5)


def test_one_openmp_runtime_in_the_process():
    """The kernel's OpenMP calls bind to torch's libgomp: one thread team, not two. In a fresh
    process (other libraries, e.g. faiss, bring their own libgomp into a long test session)."""
    code = ("import torch; from attention.cpu_varlen import load; assert load()[1] is None;"
            "import json; from pathlib import Path;"
            "print(json.dumps(sorted({l.split()[-1] for l in Path('/proc/self/maps').read_text()"
            ".splitlines() if 'libgomp' in l})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    gomp = json.loads(proc.stdout)
    assert len(gomp) == 1 and Path(gomp[0]).parent == Path(torch.__file__).parent / "lib", gomp


def test_without_a_compiler_the_selector_says_why_and_uses_sdpa(tmp_path):
    code = ("import logging, torch; logging.basicConfig(level=logging.INFO);"
            "from attention import select_backend;"
            "print(select_backend(None, torch.device('cpu'), torch.bfloat16).name)")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               PREFILL_EMBED_KERNEL_CACHE=str(tmp_path / "kernels"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sdpa"
    assert "not cpu_varlen" in proc.stderr and "no-such-compiler" in proc.stderr, proc.stderr


def test_an_unwritable_cache_folder_builds_in_the_temp_folder(tmp_path):
    code = ("import logging, torch; logging.basicConfig(level=logging.INFO);"
            "from attention import select_backend;"
            "print(select_backend(None, torch.device('cpu'), torch.float32).name)")
    env = dict(os.environ, PREFILL_EMBED_KERNEL_CACHE="/proc/no-such-folder/kernels",
               TMPDIR=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cpu_varlen", proc.stderr
    built = list((tmp_path / "prefill-embed-kernels").glob("cpu_varlen-*.so"))
    assert len(built) == 1 and f"built {built[0]}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("window", [None, (6, 6)])
@pytest.mark.parametrize("heads,dim", [(4, 32), (2, 64), (2, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_bias_table_is_read_in_place(window, heads, dim, dtype):
    """A bias given as one (H, L_max, L_max) table (MPNet) runs in the kernel, on every path."""
    lens = [5, 40, 1, 17, 33]
    q, k, v, cu = _batch(lens, heads, heads, dim, dtype, seed=4)
    g = torch.Generator().manual_seed(5)
    table = torch.randn(heads, max(lens), max(lens), generator=g).to(dtype)
    meta = _meta(lens, cu, False).with_bias(lambda i: table[:, :lens[i], :lens[i]], table=table)
    ref = BACKENDS["naive"](CPU, dtype).forward(q, k, v, meta, window=window)
    for path in _modes(dtype):
        backend = CpuVarlenAttention(CPU, dtype)
        backend.bf16_path = path
        backend._per_sequence = None  # must not be needed
        _check(backend.forward(q, k, v, meta, window=window), ref, dtype)
