"""Linear layers with weights prepacked once for oneDNN, applied to a loaded body on CPU.

`pack_linears(body, dtype, tokens)` runs after the weights (and any LoRA delta) are in place: it
replaces every `nn.Linear` of the body (and `LinearAct` / `LinearAdd`, which are nn.Linears) with
a `PackedLinear` whose weight was reordered once by `torch.ops.mkldnn._reorder_linear_weight`
into oneDNN's blocked layout for batches of `tokens` rows. Each call then goes straight to
`torch.ops.mkldnn._linear_pointwise` with its epilogue fused: bias always, the activation of a
`LinearAct` (GELU, ReLU), and the residual of a `LinearAdd` (`_linear_pointwise.binary`, "add").
Plain `F.linear` re-derives the layout on every call; at MiniLM's shapes in bfloat16 the packed
call was faster per matmul in a micro-benchmark; end to end it is within noise so far (docs/BENCHMARKS.md).

The ops are private, so packing runs only where they exist and oneDNN has primitives for the
dtype on this CPU (`onednn_fusion_available`); anywhere else the body keeps its plain modules.
`ENABLED = False` (or PREFILL_EMBED_PACKED_LINEARS=0 in the environment) turns packing off, which
the tests use to compare both paths.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .layers import _ONEDNN_ACTS, LinearAct, LinearAdd, onednn_fusion_available

logger = logging.getLogger(__name__)

ENABLED = os.environ.get("PREFILL_EMBED_PACKED_LINEARS", "1") != "0"


class PackedLinear(nn.Module):
    """A linear whose weight is a oneDNN-packed tensor (no longer an nn.Parameter), with the
    epilogue of the module it replaced: `forward(x)` or, for a LinearAdd, `forward(x, residual)`."""

    def __init__(self, linear: nn.Linear, tokens: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # (out, in) in oneDNN's blocked layout; a plain attribute, so .to()/state_dict skip it.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), tokens)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.post_op, self.algorithm = _ONEDNN_ACTS.get(getattr(linear, "act_name", None), ("none", ""))
        self.adds_residual = isinstance(linear, LinearAdd)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                       # (T, in)
        if residual is not None:
            y = torch.ops.mkldnn._linear_pointwise.binary(
                x, residual.reshape(-1, self.out_features), self.packed, self.bias, "add")
        else:
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.post_op, [],
                                                   self.algorithm)
        return y.view(*shape[:-1], self.out_features)                      # (T, out)

    def extra_repr(self) -> str:
        epilogue = "+residual" if self.adds_residual else ("" if self.post_op == "none" else f"+{self.post_op}")
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}{epilogue}"


def _packable(module: nn.Module) -> bool:
    if not isinstance(module, nn.Linear):
        return False
    act = getattr(module, "act_name", None)
    return act is None or act in _ONEDNN_ACTS  # an activation oneDNN lacks (silu) stays as it is


def pack_linears(body: nn.Module, dtype: torch.dtype, tokens: int) -> int:
    """Replace the body's linears by PackedLinears in place (CPU, supported dtype, ENABLED);
    returns how many were packed (0: the body is unchanged)."""
    params = list(body.parameters())
    if not ENABLED or not params or params[0].device.type != "cpu" or not onednn_fusion_available(dtype):
        return 0
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return 0
    targets = [(name, m) for name, m in body.named_modules() if _packable(m)]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, child, PackedLinear(module, tokens))
    logger.info("packed %d linear layers for oneDNN (%s, %d-token batches)", len(targets), dtype, tokens)
    return len(targets)

