"""int8 weights (workers/quant/int8.py) on the bundled MiniLM against its float32 vectors on real text
the calibration never saw; the kernel against naive int8 math; fingerprint and refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.inputs.samples import sample_passages
from tiny_models import cosines
from workers import Engine, EngineConfig
from workers.quant import int8
from workers.models.layers import LinearAct

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
    xs = x / s
    xsc = xs.abs().amax(1, keepdim=True) / 127
    xq = (xs / xsc).round().clamp(-127, 127)
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
