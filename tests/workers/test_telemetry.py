"""Telemetry and memory sizing: per-stage times, the profiler switch, the GPU token budget."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from workers import Engine, EngineConfig
from workers.engine.engine import STAGES
from workers.engine.memory import budget_from_profile

TEXTS = [f"passage {i}: " + "words about retrieval and ranking " * (i % 9 + 1) for i in range(300)]
GIB = 1 << 30


@pytest.mark.parametrize("loop", ["simple", "double_buffer"])
def test_stage_times_add_up_to_no_more_than_wall_time(loop):
    engine = Engine(EngineConfig(dtype="float32", execute_loop=loop, max_num_batched_tokens=1024))
    engine.embed(TEXTS)
    s = engine.stats
    stages = s.stage_seconds()
    assert tuple(stages) == STAGES
    assert stages["copy_in"] == 0.0  # CPU: the packed arrays are used in place
    assert stages["tokenize"] > 0 and stages["build"] > 0 and stages["forward"] > 0
    assert stages["copy_out"] >= 0
    # The device side (forward, copy-out, idle) runs on the caller's thread: it cannot exceed
    # wall time; in the simple loop the CPU stages are inside "idle" as well.
    assert stages["forward"] + stages["copy_out"] + stages["idle"] <= s.seconds + 1e-3
    assert s.batches > 5


def test_profile_switch_writes_one_trace_of_the_window(tmp_path):
    engine = Engine(EngineConfig(dtype="float32", max_num_batched_tokens=512,
                                 profile_dir=str(tmp_path / "traces"), profile_batches=3))
    plain = Engine(EngineConfig(dtype="float32", max_num_batched_tokens=512))
    np.testing.assert_array_equal(engine.embed(TEXTS), plain.embed(TEXTS))  # profiling changes nothing
    files = list((tmp_path / "traces").iterdir())
    assert [f.name for f in files] == [f"engine-{__import__('os').getpid()}-0.json"]
    assert engine._trace.path == str(files[0])
    events = json.loads(files[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("aten::") for n in names), sorted(names)[:20]
    # Three batches of a 6-layer model, four linears a layer (fused qkv, out, up, down): each
    # is one top-level op, aten::linear or oneDNN's packed/fused linear (packing on or off).
    linears = [e for e in events if e.get("ph") == "X" and e.get("name") in
               ("aten::linear", "mkldnn::_linear_pointwise", "mkldnn::_linear_pointwise.binary")]
    assert len(linears) == 3 * 6 * 4, Counter(e.get("name") for e in linears)
    engine.embed(TEXTS[:50])
    assert len(list((tmp_path / "traces").iterdir())) == 1  # once per engine


def test_trace_written_even_when_the_call_ends_inside_the_window(tmp_path):
    engine = Engine(EngineConfig(dtype="float32", max_num_batched_tokens=512,
                                 profile_dir=str(tmp_path), profile_batches=1000))
    engine.embed(TEXTS[:100])
    assert engine._trace.path is not None and json.loads(open(engine._trace.path).read())


def test_trace_window_spans_calls_of_one_batch_each(tmp_path):
    engine = Engine(EngineConfig(dtype="float32", profile_dir=str(tmp_path), profile_batches=2))
    engine.embed(TEXTS[:3])                  # one batch: the warm-up, nothing written
    assert engine._trace.path is None and not list(tmp_path.iterdir())
    engine.embed(TEXTS[3:6])                 # the next call's batch is profiled
    assert engine._trace.path is not None


def test_budget_is_what_fits_under_the_utilization():
    # 80 GiB card, 2 GiB in use, 0.9 allowed -> 70 GiB for activations at 1 MiB/token.
    budget = budget_from_profile(free_bytes=78 * GIB, total_bytes=80 * GIB, utilization=0.9,
                                 activation_bytes=8192 << 20, profile_tokens=8192, max_length=512,
                                 cap=1 << 20)
    assert budget == (int(0.9 * 80 * 1024) - 2 * 1024) // 256 * 256  # 71,680 tokens
    capped = budget_from_profile(78 * GIB, 80 * GIB, 0.9, 8192 << 10, 8192, 512)
    assert capped == 1 << 17


def test_budget_errors_name_the_numbers_and_the_fix():
    with pytest.raises(RuntimeError, match="already in use.*raise gpu_memory_utilization"):
        budget_from_profile(free_bytes=5 * GIB, total_bytes=80 * GIB, utilization=0.9,
                            activation_bytes=1 << 20, profile_tokens=1024, max_length=512)
    with pytest.raises(RuntimeError, match="max_length=8192 .* lower max_length"):
        budget_from_profile(free_bytes=80 * GIB, total_bytes=80 * GIB, utilization=0.9,
                            activation_bytes=16 * GIB, profile_tokens=1024,
                            max_length=8192)


@pytest.mark.parametrize("kwargs,match", [
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization=0 must be a fraction"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5"),
    ({"profile_batches": 0}, "profile_batches=0 must be a positive integer"),
])
def test_config_rejects_bad_telemetry_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_budget_is_profiled_and_a_full_batch_runs():
    engine = Engine(EngineConfig(device="cuda", dtype="bfloat16", gpu_memory_utilization=0.5))
    r = engine.resolved
    assert r.max_num_batched_tokens >= r.max_length and r.max_num_batched_tokens % 256 == 0
    vectors = engine.embed(TEXTS * 4)
    cpu = Engine(EngineConfig(device="cpu", dtype="float32")).embed(TEXTS * 4)
    assert float((vectors * cpu).sum(1).min()) >= 0.999
    assert engine.stats.copy_in_seconds > 0
