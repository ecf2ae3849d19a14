"""Small building blocks shared by the model implementations.

`LinearAct` fuses a linear layer with its activation. On CPU it calls oneDNN's fused
linear+GELU primitive (`torch.ops.mkldnn._linear_pointwise`, the op inductor itself emits): the
GELU runs on the output tile while it is still in cache, measured 1.5x (bf16) to 1.8x (fp32)
faster than linear then GELU at MiniLM's FFN shape. The op is private, so it is used only when it
exists, and the choice is made once per process (per dtype: oneDNN has no bfloat16/float16
primitive on CPUs without AVX512-BF16/FP16, where the op fails rather than falling back).
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# activation name -> (oneDNN post-op, its algorithm argument)
_ONEDNN_ACTS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"),
                "gelu_pytorch_tanh": ("gelu", "tanh"), "relu": ("relu", "")}


@functools.cache
def onednn_fusion_available() -> bool:
    ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    logger.info("fused linear+activation on CPU: %s", "oneDNN" if ok else "unavailable (unfused)")
    return ok


@functools.cache
def _onednn_dtype_ok(dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float16:
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return True


class LinearAct(nn.Linear):
    """nn.Linear followed by an activation; same parameters, so checkpoints load unchanged."""

    def __init__(self, d_in: int, d_out: int, act: str, bias: bool = True):
        super().__init__(d_in, d_out, bias=bias)
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={act!r} is not supported; supported: {sorted(ACTIVATIONS)}")
        self.act_name = act
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and self.act_name in _ONEDNN_ACTS and onednn_fusion_available()
                and _onednn_dtype_ok(x.dtype)):
            op, algorithm = _ONEDNN_ACTS[self.act_name]
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, op, [], algorithm)
        return self.act(F.linear(x, self.weight, self.bias))
