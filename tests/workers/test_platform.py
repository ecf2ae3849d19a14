"""Device and dtype resolution: what the machine offers, decided once, errors that name the fix."""
import pytest
import torch

from workers.engine.platform import cpu_has_fast_bf16, resolve_device, resolve_dtype


def test_cpu_device_and_explicit_dtypes():
    cpu = resolve_device("cpu")
    assert cpu == torch.device("cpu")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_dtype("float16", cpu) is torch.float16


def test_auto_dtype_on_cpu_follows_the_bf16_flags():
    flags = open("/proc/cpuinfo").read().split()
    fast = "amx_bf16" in flags or "avx512_bf16" in flags
    assert cpu_has_fast_bf16() is fast
    assert resolve_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if fast else torch.float32)


def test_auto_device_is_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_asking_for_cuda_without_one_says_what_to_do():
    with pytest.raises(RuntimeError, match="use device='cpu' or 'auto'"):
        resolve_device("cuda:1")
