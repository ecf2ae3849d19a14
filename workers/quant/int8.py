"""int8 weights for a loaded CPU body (`EngineConfig(quantization="int8")`): SmoothQuant-style
scale migration, per-output-channel int8 weights, per-token dynamic int8 activations.

Recipe, decided by measurement on MiniLM (docs/BENCHMARKS.md): naive per-channel dynamic int8
loses too much (min cosine 0.935 on 600 passages) because a few activation channels carry
outliers. So, per linear:
  1. calibrate: run the float model over fixed calibration passages (`CALIBRATION`, the first
     passages of pipeline/inputs/samples.py's corpus at seed 9; their hash goes in the fingerprint) and
     keep each linear's per-input-channel max |x|, a (in,) vector;
  2. migrate: s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha) (alpha 0.5); W' = W * s, x' = x / s,
     which flattens the activation outliers into the weights;
  3. quantize W' per output row: scale_o = max|W'_o| / 127, int8, prepacked once for oneDNN
     (`torch.ops.onednn.qlinear_prepack`);
  4. at run time: x' = x / s, per-token scale_t = max|x'_t| / 127, int8 x; one oneDNN int8 matmul
     (`torch.ops.onednn.qlinear_pointwise`, int32 accumulation, times the weight scales on the
     way out), then times scale_t, plus bias, then the layer's activation or residual.
Linears named in `KEEP_FLOAT` (the most sensitive ones, measured) stay in the compute dtype.

Step 4 runs as two row passes of our own around the matmul (int8_rows.cpp, built on first use
like the attention kernel): one reads x and writes the uint8 input with its per-token scales,
one reads the matmul's output (in the compute dtype) and writes the finished rows (scale, bias,
activation, residual in one pass). Without a C++ compiler the same steps run as torch ops (slower, same
numbers up to rounding), said once in the log.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from attention import native

from ..models.layers import LinearAdd

logger = logging.getLogger(__name__)

ALPHA = 0.5
CALIBRATION_PASSAGES, CALIBRATION_SEED = 64, 9
# Linears kept in the compute dtype, by name suffix. On MiniLM (300 held-out passages, bf16
# activations) keeping the last layer's FFN output in bf16 gave min cosine vs fp32 0.9981,
# median 0.9990; the gate (0.99 / 0.998) holds with it.
KEEP_FLOAT: tuple[str, ...] = ("layer.5.output.dense",)


def available() -> bool:
    """oneDNN's int8 linear ops exist in this torch (private ops, so checked)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "onednn")
            and hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack"))


ROWS_SOURCE = Path(__file__).with_name("int8_rows.cpp")
_KINDS = {torch.float32: 0, torch.bfloat16: 1}
# activation name -> the row kernel's code (others run as torch ops after the row pass)
_ROW_ACTS = {"gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "relu": 3}


@functools.cache
def row_kernel() -> ctypes.CDLL | None:
    """int8_rows.cpp built for this CPU, or None (said once) where it cannot be built."""
    lib, reason = native.build(ROWS_SOURCE)
    if lib is None:
        logger.warning("int8: row kernel unavailable (%s); quantizing with torch ops (slower)", reason)
        return None
    lib.int8_rows.restype = ctypes.c_int
    lib.int8_rows.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                              ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_int]
    return lib


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def rows(x: torch.Tensor, *, row_scale=None, bias=None, act: int = 0, residual=None, norm=None,
         out_dtype: torch.dtype | None = None, quantize_with: torch.Tensor | None = None):
    """One row pass of int8_rows.cpp over (T, n) `x` (fp32 or bf16, contiguous): times
    `row_scale` (T,), plus `bias` (n,), activation code `act`, plus `residual` (T, n), LayerNorm
    `norm` (weight, bias, eps); returns (out in `out_dtype` or None, (uint8 (T, n), scale (T,))
    quantized with `quantize_with` (the next linear's 1/s, (n,) fp32) or None)."""
    lib = row_kernel()
    T, n = x.shape
    out = None if out_dtype is None else torch.empty(T, n, dtype=out_dtype)
    q = scale = None
    if quantize_with is not None:
        q, scale = torch.empty(T, n, dtype=torch.uint8), torch.empty(T, dtype=torch.float32)
    ln_w, ln_b, eps = norm if norm is not None else (None, None, 0.0)
    if residual is not None:
        residual = residual.reshape(T, n).contiguous()
    rc = lib.int8_rows(T, n, _ptr(x), _KINDS[x.dtype], _ptr(row_scale), _ptr(bias), act,
                       _ptr(residual), _KINDS[residual.dtype] if residual is not None else 0,
                       _ptr(ln_w), _ptr(ln_b), eps, _ptr(out), _KINDS[out_dtype] if out is not None else 0,
                       _ptr(quantize_with), _ptr(q), _ptr(scale), torch.get_num_threads())
    if rc:
        raise ValueError(f"int8_rows refused its arguments (code {rc}): x {tuple(x.shape)} {x.dtype}")
    return out, (None if q is None else (q, scale))


def calibration_texts() -> list[str]:
    """The fixed calibration passages (loaded by path: the `pipeline` package imports ray)."""
    path = Path(__file__).resolve().parents[2] / "pipeline" / "inputs" / "samples.py"
    spec = importlib.util.spec_from_file_location("_calibration_samples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sample_passages(CALIBRATION_PASSAGES, seed=CALIBRATION_SEED, max_chars=1000)


def calibration_hash(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


class Int8Linear(nn.Module):
    """y = act((int8(x / s) @ int8(W * s)^T) * scale_t * scale_o + b) [+ residual]."""

    def __init__(self, linear: nn.Linear, act_max: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()                                        # (out, in)
        s = (act_max.float().clamp(min=1e-5) ** ALPHA) / (w.abs().amax(0).clamp(min=1e-5) ** (1 - ALPHA))
        w = w * s                                                                 # W' = W diag(s)
        self.w_scale = (w.abs().amax(1) / 127).clamp(min=1e-8)                   # (out,) float32
        w_int8 = (w / self.w_scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.w_packed = torch.ops.onednn.qlinear_prepack(w_int8, None)
        self.w_zero = torch.zeros(self.out_features, dtype=torch.int64)
        self.inv_s = (1 / s).float().contiguous()                                # (in,) fp32
        self.bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.act = getattr(linear, "act", None)
        self.act_code = _ROW_ACTS.get(getattr(linear, "act_name", None), 0)
        self.adds_residual = isinstance(linear, LinearAdd)
        self.dtype = dtype

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        if row_kernel() is None or x.dtype not in _KINDS:
            return self._forward_torch(x, residual).view(*shape[:-1], self.out_features)
        _, (xq, scale) = rows(x.reshape(-1, shape[-1]).contiguous(), quantize_with=self.inv_s)
        y = self.matmul(xq)
        y, _ = rows(y, row_scale=scale, bias=self.bias, act=self.act_code, residual=residual,
                    out_dtype=self.dtype)
        if self.act is not None and not self.act_code:
            y = self.act(y)
        return y.view(*shape[:-1], self.out_features)

    def matmul(self, xq: torch.Tensor) -> torch.Tensor:
        """(T, in) uint8 with zero point 128 -> (T, out) times the weight scales, in the compute
        dtype: bf16 halves what the matmul writes and the next pass reads, and rounds where the
        bf16 model itself rounds its matmul outputs. uint8 + 128 holds the same numbers as int8
        in [-127, 127]: oneDNN's JIT int8 matmul takes u8 activations everywhere, s8 only with
        AMX; without AMX (AVX512-VNNI, e.g. Zen 4) s8 fell to its reference kernel, ~700x slower
        at MiniLM's shapes."""
        return torch.ops.onednn.qlinear_pointwise(xq, 1.0, 128, self.w_packed, self.w_scale, self.w_zero,
                                                  None, 1.0, 0, self.dtype, "none", [], "")

    def _forward_torch(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The same steps as torch ops (no C++ compiler here)."""
        x = x.reshape(-1, x.shape[-1]).float() * self.inv_s                       # (T, in)
        scale = (x.abs().amax(1, keepdim=True) / 127).clamp_(min=1e-8)            # (T, 1)
        xq = torch.round(x * (1 / scale)).clamp_(-127, 127).add_(128).to(torch.uint8)
        y = self.matmul(xq).float().mul_(scale)                                    # (T, out)
        if self.bias is not None:
            y = y.add_(self.bias)
        if self.act is not None:
            y = self.act(y)
        if residual is not None:
            y = y + residual.reshape(y.shape)
        return y.to(self.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 (per-token x, per-channel W)"


def _targets(body: nn.Module, keep: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in body.named_modules()
            if isinstance(m, nn.Linear) and not n.endswith(keep)]


def calibrate(body: nn.Module, run, texts: list[str], keep: tuple[str, ...] | None = None) -> dict:
    """Per-input-channel max |x| of each target linear over `run(texts)` (the float forward)."""
    amax: dict[str, torch.Tensor] = {}
    keep = KEEP_FLOAT if keep is None else keep

    def hook(name):
        def record(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()
            amax[name] = x if name not in amax else torch.maximum(amax[name], x)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in _targets(body, keep)]
    try:
        run(texts)
    finally:
        for h in handles:
            h.remove()
    return amax


# CPU flag -> what oneDNN's int8 matmul runs on, best first; and what it means for int8 here.
_INT8_PATHS = (
    ("amx_int8", "AMX int8 tiles", "AMX bf16 is as fast per tile; int8 has not been measured faster "
     "than bf16 on an AMX CPU yet: benchmarks/bench_int8.py says which wins here"),
    ("avx512_vnni", "AVX512-VNNI", "measured 1.43x the bf16 engine on AMD Zen 4 at one thread "
     "(docs/BENCHMARKS.md)"),
    ("avx_vnni", "AVX-VNNI (256-bit)", "not measured; benchmarks/bench_int8.py says which wins here"),
)


def cpu_path(flags: str | None = None) -> tuple[str | None, str]:
    """(oneDNN's int8 instruction set on this CPU or None, what that means for int8's speed)."""
    flags = set((flags if flags is not None else native.cpu_flags()).split())
    for flag, name, note in _INT8_PATHS:
        if flag in flags:
            return name, note
    return None, ("this CPU has no int8 dot-product instructions (no VNNI, no AMX): int8 matmuls "
                  "are emulated and slower than bf16 or float32; drop quantization='int8'")


def quantize(body: nn.Module, amax: dict, dtype: torch.dtype, keep: tuple[str, ...] | None = None) -> int:
    """Replace each calibrated linear by an Int8Linear in place; returns how many. Says once
    which int8 instructions this CPU gives oneDNN, and warns where there are none."""
    path, note = cpu_path()
    if path is None:
        logger.warning("int8: %s", note)
    else:
        logger.info("int8: oneDNN matmuls on %s: %s", path, note)
    targets = [(n, m) for n, m in _targets(body, KEEP_FLOAT if keep is None else keep) if n in amax]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, child, Int8Linear(module, amax[name], dtype))
    logger.info("int8: %d linears quantized, %d kept in %s", len(targets),
                sum(isinstance(m, nn.Linear) for m in body.modules()), dtype)
    return len(targets)

