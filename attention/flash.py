"""GPU backends over packed sequences with no padding at all.

`flash`: the flash-attn package's varlen kernel (optional extra `gpu`).
`torch_varlen`: PyTorch's own varlen flash kernel (`torch.nn.attention.varlen.varlen_attn`), CUDA
only, so a GPU works without building flash-attn. Both take grouped-query K/V natively.

Both take a sliding window as `window_size=(left, right)` (torch 2.13's varlen_attn has it; an
older torch without it hands windowed calls to SDPA). Neither kernel takes an additive score bias,
so a model with one (MPNet) runs its attention through per-sequence SDPA (see base.py).
"""
from __future__ import annotations

import inspect

import torch

from .base import AttentionBackend, AttentionMetadata

_HALF = (torch.float16, torch.bfloat16)


def _unavailable(device: torch.device, dtype: torch.dtype, kernel) -> str | None:
    """Why a CUDA half-precision kernel cannot run here, or None; `kernel()` imports it and
    returns the reason it is missing (or None)."""
    if device.type != "cuda":
        return f"it needs a CUDA device (this engine runs on {device.type})"
    if dtype not in _HALF:
        return f"it needs float16 or bfloat16 (got {dtype}); set dtype='bfloat16' or pick 'sdpa'"
    return kernel()


def _flash_attn_missing() -> str | None:
    try:
        import flash_attn  # noqa: F401
    except ImportError as e:
        return f"the flash-attn package is not importable ({e}); pip install '.[gpu]'"
    return None


def _varlen_attn_missing() -> str | None:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn"
    return None


def _window_size(window, causal: bool) -> tuple[int, int]:
    if window is not None:
        return window
    return (-1, 0) if causal else (-1, -1)


class FlashAttention(AttentionBackend):
    name = "flash"
    native_gqa = True
    supports_bias = False

    @classmethod
    def available(cls, device, dtype):
        return _unavailable(device, dtype, _flash_attn_missing)

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float, window=None) -> torch.Tensor:
        from flash_attn import flash_attn_varlen_func
        cu = meta.cu_seqlens
        return flash_attn_varlen_func(q, k, v, cu, cu, meta.max_seqlen, meta.max_seqlen,
                                      softmax_scale=scale, causal=meta.causal,
                                      window_size=_window_size(window, meta.causal))


class TorchVarlenAttention(AttentionBackend):
    name = "torch_varlen"
    supports_bias = False

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        from torch.nn.attention.varlen import varlen_attn
        self._varlen = varlen_attn
        params = inspect.signature(varlen_attn).parameters
        # torch 2.11's varlen_attn has no enable_gqa: the interface then repeats K/V heads.
        self.native_gqa = "enable_gqa" in params
        self._has_window = self.supports_window = "window_size" in params

    @classmethod
    def available(cls, device, dtype):
        return _unavailable(device, dtype, _varlen_attn_missing)

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float, window=None) -> torch.Tensor:
        cu = meta.cu_seqlens
        kwargs = {"scale": scale}
        if self.native_gqa:
            kwargs["enable_gqa"] = k.shape[1] != q.shape[1]
        if self._has_window:
            kwargs["window_size"] = _window_size(window, meta.causal)
        elif meta.causal:
            kwargs["is_causal"] = True  # older signature
        return self._varlen(q, k, v, cu, cu, meta.max_seqlen, meta.max_seqlen, **kwargs)
