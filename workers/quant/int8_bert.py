"""A BERT encoder layer with int8 linears as one data flow: each linear's epilogue finishes its
output in one row pass and quantizes it for the linear that consumes it.

After `int8.quantize`, a `BertLayer` (BERT, RoBERTa, MiniLM) runs four int8 linears. Run as
modules, each one quantizes its input and finishes its output separately, and the two LayerNorms
are passes of their own: ten passes over the activations per layer. Here (`fuse_bert_layers`):

  h  --(quantized by the previous layer's last pass)--> qkv --> attention --> a
  a  --quantize--> attention.output.dense --> +h, LayerNorm = h1 (bf16) and h1 quantized
  h1 quantized --> intermediate.dense --> GELU, quantized (never written in bf16)
  --> output.dense --> +h1, LayerNorm = h2 (bf16) and h2 quantized for the next layer's qkv

five passes per layer (the row kernel of int8_rows.cpp; the matmuls are oneDNN's), the same
numbers up to where the float32 values are rounded. A layer whose linears are not all int8 (a
linear kept in float: `int8.KEEP_FLOAT`) takes the float module for that linear.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..models.bert import BertAttention, BertLayer
from ..models.layers import LayerStack
from . import int8
from .int8 import Int8Linear, rows

logger = logging.getLogger(__name__)


def _norm(ln: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return (ln.weight.detach().float().contiguous(), ln.bias.detach().float().contiguous(), float(ln.eps))


class Int8BertLayers(nn.Module):
    """The layers of a BERT encoder run as the fused int8 flow; `forward(x, meta, backend)` as
    `LayerStack`'s. Keeps the layers (and their names) as children: `layer.N...`."""

    def __init__(self, stack: LayerStack, dtype: torch.dtype):
        super().__init__()
        self.layer = stack.layer
        self.dtype = dtype
        self.norms = [(_norm(layer.attention.output.LayerNorm), _norm(layer.output.LayerNorm))
                      for layer in self.layer]

    def forward(self, x: torch.Tensor, meta, backend) -> torch.Tensor:
        xq = None
        for i, layer in enumerate(self.layer):
            nxt = self.layer[i + 1].attention.self.qkv.inv_s if i + 1 < len(self.layer) else None
            x, xq = self._layer(layer, self.norms[i], x, xq, nxt, meta, backend)
        return x

    def _layer(self, layer: BertLayer, norms, h, hq, next_inv_s, meta, backend):
        """One layer: h (T, hidden) in the compute dtype and, when the previous layer made it, h
        quantized for this qkv; returns (h2, h2 quantized for `next_inv_s` or None)."""
        sa, out = layer.attention.self, layer.attention.output
        ffn1, ffn2 = layer.intermediate.dense, layer.output.dense
        T = h.shape[0]
        if hq is None:
            _, hq = rows(h, quantize_with=sa.qkv.inv_s)
        qkv, _ = rows(sa.qkv.matmul(hq[0]), row_scale=hq[1], bias=sa.qkv.bias, out_dtype=self.dtype)
        q, k, v = qkv.view(T, 3, sa.num_heads, sa.head_dim).unbind(1)         # (T, H, D) each
        a = backend.forward(q, k, v, meta).reshape(T, -1)                      # (T, hidden)
        _, aq = rows(a, quantize_with=out.dense.inv_s)
        h1, h1q = rows(out.dense.matmul(aq[0]), row_scale=aq[1], bias=out.dense.bias, residual=h,
                       norm=norms[0], out_dtype=self.dtype, quantize_with=ffn1.inv_s)
        y = ffn1.matmul(h1q[0])                                                # (T, inter) fp32
        if isinstance(ffn2, Int8Linear):
            _, gq = rows(y, row_scale=h1q[1], bias=ffn1.bias, act=ffn1.act_code, quantize_with=ffn2.inv_s)
            return rows(ffn2.matmul(gq[0]), row_scale=gq[1], bias=ffn2.bias, residual=h1, norm=norms[1],
                        out_dtype=self.dtype, quantize_with=next_inv_s)
        g, _ = rows(y, row_scale=h1q[1], bias=ffn1.bias, act=ffn1.act_code, out_dtype=self.dtype)
        return layer.output(g, h1), None                                       # float dense + LayerNorm


def _fusable(layer: nn.Module) -> bool:
    if not isinstance(layer, BertLayer) or type(layer.attention) is not BertAttention:
        return False
    linears = (layer.attention.self.qkv, layer.attention.output.dense, layer.intermediate.dense)
    return (all(isinstance(m, Int8Linear) for m in linears) and layer.intermediate.dense.act_code != 0
            and type(layer.attention.output.LayerNorm) is nn.LayerNorm
            and type(layer.output.LayerNorm) is nn.LayerNorm)


def fuse_bert_layers(body: nn.Module, dtype: torch.dtype) -> bool:
    """Replace a BERT body's `encoder` by `Int8BertLayers` when every layer can run the fused
    flow (int8 qkv, attention output and intermediate linears, the row kernel built); True if
    it did. Other bodies keep their Int8Linear modules, each run on its own."""
    stack = getattr(body, "encoder", None)
    if (not isinstance(stack, LayerStack) or int8.row_kernel() is None or dtype not in (torch.float32, torch.bfloat16)
            or not all(_fusable(layer) for layer in stack.layer)):
        return False
    body.encoder = Int8BertLayers(stack, dtype)
    logger.info("int8: %d BERT layers fused (5 row passes per layer)", len(stack.layer))
    return True
