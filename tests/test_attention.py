"""Every attention backend that runs here against the naive reference on random packed batches."""
import pytest
import torch

from attention import BACKENDS, AttentionMetadata, select_backend
from attention.sdpa import SdpaAttention

CPU = torch.device("cpu")


def _batch(lens, heads=4, kv_heads=4, dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q = torch.randn(T, heads, dim, generator=g).to(dtype)
    k = torch.randn(T, kv_heads, dim, generator=g).to(dtype)
    v = torch.randn(T, kv_heads, dim, generator=g).to(dtype)
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    return q, k, v, cu


def _meta(lens, cu, causal):
    return AttentionMetadata(cu_seqlens=cu, max_seqlen=max(lens), seqlens=list(lens), causal=causal)


LENGTHS = [[1], [7], [1, 2, 3], [5, 1, 33, 17, 2, 64, 9, 9, 9, 40, 1, 3], list(range(1, 30))]


@pytest.mark.parametrize("lens", LENGTHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_sdpa_matches_naive(lens, causal, dtype, tol):
    q, k, v, cu = _batch(lens, dtype=dtype)
    ref = BACKENDS["naive"](CPU, dtype).forward(q, k, v, _meta(lens, cu, causal))
    sdpa = SdpaAttention(CPU, dtype)
    meta = sdpa.prepare(_meta(lens, cu, causal))
    out = sdpa.forward(q, k, v, meta)
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def test_naive_is_per_sequence_softmax():
    """The reference itself against a hand-written per-sequence loop (no packing at all)."""
    lens = [3, 1, 6]
    q, k, v, cu = _batch(lens)
    out = BACKENDS["naive"](CPU, torch.float32).forward(q, k, v, _meta(lens, cu, causal=True))
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        scores = torch.einsum("qhd,khd->hqk", q[s:e], k[s:e]) / 4.0
        n = e - s
        scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        expect = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[s:e])
        torch.testing.assert_close(out[s:e], expect)


@pytest.mark.parametrize("name", ["naive", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_equals_repeated_heads(name, causal):
    lens = [4, 9, 2]
    q, k, v, cu = _batch(lens, heads=6, kv_heads=2)
    backend = BACKENDS[name](CPU, torch.float32)
    meta = backend.prepare(_meta(lens, cu, causal))
    out = backend.forward(q, k, v, meta)
    k_full, v_full = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    ref = BACKENDS["naive"](CPU, torch.float32).forward(q, k_full, v_full, _meta(lens, cu, causal))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_selector_defaults_to_sdpa_on_cpu():
    assert select_backend(None, CPU, torch.bfloat16).name == "sdpa"


@pytest.mark.parametrize("name", ["flash", "torch_varlen"])
def test_gpu_backends_refuse_cpu_with_reason(name):
    with pytest.raises(RuntimeError, match="CUDA"):
        select_backend(name, CPU, torch.bfloat16)


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="naive"):
        select_backend("fast", CPU, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["flash", "torch_varlen", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backends_match_naive(name, causal):
    dev = torch.device("cuda")
    if BACKENDS[name].available(dev, torch.bfloat16):
        pytest.skip(BACKENDS[name].available(dev, torch.bfloat16))
    lens = [5, 1, 33, 17, 2, 64]
    q, k, v, cu = (t.to(dev) for t in _batch(lens, heads=8, kv_heads=2, dim=64, dtype=torch.bfloat16))
    backend = BACKENDS[name](dev, torch.bfloat16)
    out = backend.forward(q, k, v, backend.prepare(_meta(lens, cu, causal)))
    ref = BACKENDS["naive"](dev, torch.bfloat16).forward(q, k, v, _meta(lens, cu, causal))
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
