"""Prepacked oneDNN linears (workers/models/packed_linear.py) against the plain path.

The plain path is the same engine with packing switched off (`packed_linear.ENABLED = False`,
the guard a torch without the private ops takes); pooled vectors must agree: float32 to 1e-5,
bfloat16 by cosine >= 0.999. Run on the bundled MiniLM (real text) and a tiny random Qwen2.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_decoders import make_tiny_decoder
from tiny_models import cosines
from workers import Engine, EngineConfig
from workers.models import packed_linear
from workers.models.layers import LinearAct, LinearAdd, onednn_fusion_available
from workers.models.packed_linear import PackedLinear, pack_linears
from pipeline.inputs.samples import sample_passages

TEXTS = sample_passages(40, seed=3, max_chars=400)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    make_tiny_decoder(folder, "Qwen2Model")
    return str(folder)


def _both(monkeypatch, **config):
    packed = Engine(EngineConfig(**config))
    monkeypatch.setattr(packed_linear, "ENABLED", False)
    plain = Engine(EngineConfig(**config))
    monkeypatch.setattr(packed_linear, "ENABLED", True)
    return packed, plain


def _count(model, cls) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("model", ["minilm", "qwen"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_path_matches_plain_path(monkeypatch, request, model, dtype):
    if not onednn_fusion_available(getattr(torch, dtype)):
        pytest.skip(f"oneDNN has no {dtype} primitives on this CPU")
    folder = None if model == "minilm" else request.getfixturevalue("qwen")
    packed, plain = _both(monkeypatch, model=folder, dtype=dtype, pooling="mean")
    assert _count(packed.model, PackedLinear) > 0 and _count(plain.model, PackedLinear) == 0
    assert _count(packed.model, torch.nn.Linear) == 0  # every linear of the body was packed
    a, b = packed.embed(TEXTS), plain.embed(TEXTS)
    if dtype == "float32":
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    else:
        assert cosines(a, b).min() >= 0.999, cosines(a, b)[:5]


def test_guard_off_path_is_todays_path(monkeypatch):
    """With packing off the body keeps nn.Linear/LinearAct/LinearAdd and the same vectors as a
    second unpacked engine (bit for bit: nothing changed)."""
    monkeypatch.setattr(packed_linear, "ENABLED", False)
    a = Engine(EngineConfig(dtype="float32"))
    assert _count(a.model, LinearAdd) == 12 and _count(a.model, LinearAct) == 6
    b = Engine(EngineConfig(dtype="float32"))
    np.testing.assert_array_equal(a.embed(TEXTS[:8]), b.embed(TEXTS[:8]))


@pytest.mark.parametrize("act", [None, "gelu", "gelu_pytorch_tanh", "relu", "add"])
def test_packed_linear_epilogues_match_naive_math(act):
    if not onednn_fusion_available(torch.float32):
        pytest.skip("no oneDNN")
    torch.manual_seed(0)
    lin = {None: torch.nn.Linear(48, 80), "add": LinearAdd(48, 80)}.get(act) or LinearAct(48, 80, act)
    x, r = torch.randn(37, 48), torch.randn(37, 80)
    ref = x @ lin.weight.T + lin.bias
    ref = {None: ref, "add": ref + r, "relu": ref.relu(), "gelu": torch.nn.functional.gelu(ref),
           "gelu_pytorch_tanh": torch.nn.functional.gelu(ref, approximate="tanh")}[act]
    holder = torch.nn.Sequential(lin)
    assert pack_linears(holder, torch.float32, 64) == 1
    with torch.inference_mode():
        got = holder[0](x, r) if act == "add" else holder[0](x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_nothing_packed_off_cpu_dtype_or_when_disabled(monkeypatch):
    holder = torch.nn.Sequential(torch.nn.Linear(8, 8), LinearAct(8, 8, "silu"))
    monkeypatch.setattr(packed_linear, "ENABLED", False)
    assert pack_linears(holder, torch.float32, 16) == 0
    monkeypatch.setattr(packed_linear, "ENABLED", True)
    if onednn_fusion_available(torch.float32):
        assert pack_linears(holder, torch.float32, 16) == 1  # SiLU has no oneDNN epilogue here
        assert isinstance(holder[1], LinearAct)
