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


def test_selector_defaults_to_cpu_varlen_on_cpu_where_it_builds():
    from attention.cpu_varlen import load
    expect = "cpu_varlen" if load()[1] is None else "sdpa"
    assert select_backend(None, CPU, torch.bfloat16).name == expect
    assert select_backend(None, CPU, torch.float16).name == "sdpa"  # the kernel takes fp32/bf16


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


# --- additive per-sequence bias and sliding windows -------------------------------------------

def _bias_for(lens, heads=4, seed=1, dtype=torch.float32, device=CPU):
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(heads, n, n, generator=g).to(device=device, dtype=dtype) for n in lens]
    return lambda i: tables[i]


def _per_sequence_reference(q, k, v, lens, bias=None, window=None, causal=False):
    """Hand-written loop, one sequence at a time with an explicit (L, L) allowed matrix."""
    out, start = [], 0
    for i, n in enumerate(lens):
        s = slice(start, start + n)
        scores = torch.einsum("qhd,khd->hqk", q[s].float(), k[s].float()) * q.shape[-1] ** -0.5
        if bias is not None:
            scores = scores + bias(i).float()
        d = torch.arange(n)[None, :] - torch.arange(n)[:, None]       # j - i
        allowed = torch.ones(n, n, dtype=torch.bool)
        if window is not None:
            allowed &= (d >= -window[0]) & (d <= window[1])
        if causal:
            allowed &= d <= 0
        scores = scores.masked_fill(~allowed, float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[s].float()))
        start += n
    return torch.cat(out)


WINDOW_LENGTHS = [[1], [40], [5, 1, 33, 17, 2, 64, 9]]


@pytest.mark.parametrize("lens", WINDOW_LENGTHS)
@pytest.mark.parametrize("window", [(8, 8), (3, 5), (15, 15)])
@pytest.mark.parametrize("causal", [False, True])
def test_naive_window_matches_per_sequence_loop(lens, window, causal):
    q, k, v, cu = _batch(lens)
    out = BACKENDS["naive"](CPU, torch.float32).forward(q, k, v, _meta(lens, cu, causal), window=window)
    torch.testing.assert_close(out, _per_sequence_reference(q, k, v, lens, window=window, causal=causal),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("lens", WINDOW_LENGTHS)
def test_naive_bias_matches_per_sequence_loop(lens):
    q, k, v, cu = _batch(lens)
    bias = _bias_for(lens)
    meta = _meta(lens, cu, False).with_bias(bias)
    out = BACKENDS["naive"](CPU, torch.float32).forward(q, k, v, meta, window=(6, 6))
    torch.testing.assert_close(out, _per_sequence_reference(q, k, v, lens, bias=bias, window=(6, 6)),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("lens", WINDOW_LENGTHS + [list(range(1, 30))])
@pytest.mark.parametrize("window", [None, (8, 8), (2, 11)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_sdpa_bias_and_window_match_naive(lens, window, with_bias, causal, dtype, tol):
    q, k, v, cu = _batch(lens, heads=6, kv_heads=2, dtype=dtype)
    meta = _meta(lens, cu, causal)
    if with_bias:
        meta = meta.with_bias(_bias_for(lens, heads=6, dtype=dtype))
    ref = BACKENDS["naive"](CPU, dtype).forward(q, k, v, meta, window=window)
    sdpa = SdpaAttention(CPU, dtype)
    out = sdpa.forward(q, k, v, sdpa.prepare(meta), window=window)
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def test_window_wider_than_every_sequence_is_full_attention():
    lens = [5, 9]
    q, k, v, cu = _batch(lens)
    sdpa = SdpaAttention(CPU, torch.float32)
    full = sdpa.forward(q, k, v, sdpa.prepare(_meta(lens, cu, False)))
    wide = sdpa.forward(q, k, v, sdpa.prepare(_meta(lens, cu, False)), window=(9, 9))
    torch.testing.assert_close(wide, full)
    assert (sdpa.forward(q, k, v, _meta(lens, cu, False), window=(-1, -1)) == full).all()


class _NoBias(SdpaAttention):
    """A backend that declares no bias support (as flash does), runnable on the CPU."""
    name = "nobias"
    supports_bias = False
    supports_window = False

    def _attend(self, *a, **kw):
        raise AssertionError("bias/window calls must not reach a backend that cannot take them")


def test_backend_without_bias_falls_back_to_sdpa_and_says_why(caplog):
    lens = [4, 7]
    q, k, v, cu = _batch(lens)
    meta = _meta(lens, cu, False).with_bias(_bias_for(lens))
    backend = _NoBias(CPU, torch.float32)
    with caplog.at_level("WARNING", logger="attention.base"):
        out = backend.forward(q, k, v, meta)
        backend.forward(q, k, v, meta)
    ref = BACKENDS["naive"](CPU, torch.float32).forward(q, k, v, meta)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    lines = [r.message for r in caplog.records if "cannot take" in r.message]
    assert len(lines) == 1 and "nobias" in lines[0] and "bias" in lines[0] and "SDPA" in lines[0]
    out = backend.forward(q, k, v, _meta(lens, cu, False), window=(2, 2))  # window: same fallback
    ref = BACKENDS["naive"](CPU, torch.float32).forward(q, k, v, _meta(lens, cu, False), window=(2, 2))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_torch_varlen_signature_has_window_size():
    import inspect
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    assert "window_size" in inspect.signature(varlen.varlen_attn).parameters


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["flash", "torch_varlen", "sdpa"])
@pytest.mark.parametrize("window", [None, (16, 16), (7, 3)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backends_bias_and_window_match_naive(name, window, with_bias, causal):
    dev = torch.device("cuda")
    if BACKENDS[name].available(dev, torch.bfloat16):
        pytest.skip(BACKENDS[name].available(dev, torch.bfloat16))
    lens = [5, 1, 33, 17, 2, 64]
    q, k, v, cu = (t.to(dev) for t in _batch(lens, heads=8, kv_heads=2, dim=64, dtype=torch.bfloat16))
    meta = _meta(lens, cu, causal)
    if with_bias:
        meta = meta.with_bias(_bias_for(lens, heads=8, dtype=torch.bfloat16, device=dev))
    backend = BACKENDS[name](dev, torch.bfloat16)
    out = backend.forward(q, k, v, backend.prepare(meta), window=window)
    ref = BACKENDS["naive"](dev, torch.bfloat16).forward(q, k, v, meta, window=window)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
