"""CPU default: our own packed varlen attention kernel (cpu_varlen.cpp), built on first use.

torch has no varlen attention for CPU, and its SDPA called once per sequence runs at 20-55
GFLOP/s at head dims of 32-64: on all-MiniLM-L6-v2 in bf16 that was 31% of the forward for 4%
of its FLOPs (docs/BENCHMARKS.md). This kernel takes the whole packed batch in one call: one
OpenMP work item per (sequence, key/value head), longest sequences first, K/V packed once per
item and shared by every query head of a group, softmax in fp32, output rounded once.
Three paths, one per kind of CPU, all tested against the naive reference where they run:
- bf16 with AMX (Sapphire Rapids and later): 16 query rows per block, Q.K^T and P.V as tile
  dot products, probabilities rounded to bf16 for P.V as torch's bf16 attention does;
- bf16 with AVX512-BF16 where vdpbf16ps outruns fp32 FMAs (measured once per process; expected on
  AMD Zen 4, not on the Xeon this was written on):
  the same layouts with vector dot products, 4 rows per block;
- fp32 FMAs (fp32 inputs always; bf16 converted once elsewhere): 8 rows per block.

Building: `native.build` (g++ -O3 -march=native -fopenmp, 1-2 s, cached per source, compiler,
torch and CPU; see attention/native.py). No compiler or a failed build: the backend is
unavailable, the selector says why and uses `sdpa`.

Takes causal masks, windows and grouped-query K/V natively; head dims that are multiples of
16 up to 256 in float32 or bfloat16 (AMX: multiples of 32 up to 128, others take the next
path). A score bias is read in place from one shared table (`meta.bias_table`, MPNet's relative
positions). Other head dims and dtypes, and a bias given only per sequence, go per call to
SDPA, logged once.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from . import native
from .base import AttentionBackend, AttentionMetadata, Window
from .sdpa import SdpaAttention

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_varlen.cpp")
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


@functools.cache
def load() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None), or (None, the reason it cannot be built or loaded). Once per process."""
    lib, reason = native.build(SOURCE)
    if lib is None:
        return None, reason
    fn = lib.varlen_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 7, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.dpbf16_speedup.restype = ctypes.c_double
    lib.bf16_paths.restype = ctypes.c_int
    return lib, None


PATHS = {"fma": 0, "dpbf16": 1, "amx": 2}


def bf16_paths() -> list[str]:
    """The bf16 paths this build runs on this CPU ("fma" always)."""
    lib, _ = load()
    bits = lib.bf16_paths() if lib is not None else 0
    return ["fma"] + [name for name, bit in (("dpbf16", 1), ("amx", 2)) if bits & bit]


@functools.cache
def dpbf16_wins() -> bool:
    """Whether vdpbf16ps beats fp32 FMAs by 1.3x in multiply-adds per second here, measured once
    per process (~10 ms). The Xeon this was written on runs it at half the FMA instruction rate,
    i.e. the same multiply-add rate, where the vdpbf16ps path was slower than FMAs; AMD Zen 4 is
    documented to run it at full rate (not measured here)."""
    if "dpbf16" not in bf16_paths():
        return False
    speedup = load()[0].dpbf16_speedup()
    logger.info("cpu_varlen: vdpbf16ps/FMA multiply-add rate %.2f", speedup)
    return speedup >= 1.3


@functools.cache
def bf16_path() -> str:
    """The path bf16 inputs take, chosen once per process: AMX tiles where the CPU has them
    (head dims that are multiples of 32 up to 128; others take the next path), else vdpbf16ps
    where it wins (`dpbf16_wins`), else fp32 FMAs on bf16 converted once per work item."""
    if "amx" in bf16_paths():
        return "amx"
    return "dpbf16" if dpbf16_wins() else "fma"


def supported_head_dim(d: int) -> bool:
    return d % 16 == 0 and 0 < d <= 256


class CpuVarlenAttention(AttentionBackend):
    name = "cpu_varlen"
    native_gqa = True
    supports_bias = True  # as one shared table (meta.bias_table); a bias without one goes to SDPA

    def __init__(self, device, dtype):
        super().__init__(device, dtype)
        self._fn = load()[0].varlen_attention
        self._sdpa: AttentionBackend | None = None
        self.bf16_path = bf16_path() if dtype == torch.bfloat16 else "fma"

    @classmethod
    def available(cls, device, dtype):
        if device.type != "cpu":
            return f"it runs on CPU only (this engine runs on {device.type})"
        if dtype not in _DTYPES:
            return f"it takes float32 or bfloat16 (got {dtype}); pick 'sdpa'"
        return load()[1]

    def prepare(self, meta: AttentionMetadata) -> AttentionMetadata:
        lens = torch.tensor(meta.seqlens, dtype=torch.int64)
        meta.extra["cpu_varlen_order"] = torch.argsort(lens, descending=True, stable=True).int()
        meta.extra["cpu_varlen_cu"] = meta.cu_seqlens.to("cpu", torch.int32).contiguous()
        return meta

    def _attend(self, q, k, v, meta: AttentionMetadata, scale: float,
                window: Window | None = None) -> torch.Tensor:
        D = q.shape[-1]
        if (q.dtype not in _DTYPES or not supported_head_dim(D) or k.dtype != q.dtype
                or v.dtype != q.dtype or min(q.stride(-1), k.stride(-1), v.stride(-1)) != 1
                or (meta.bias is not None and meta.bias_table is None)):
            return self._per_sequence(q, k, v, meta, scale, window)
        bias = meta.extra.get("cpu_varlen_bias")
        if meta.bias_table is not None and (bias is None or bias[0] is not meta.bias_table):
            table = meta.bias_table.to(torch.float32).contiguous()     # (H, L_max, L_max), once
            if table.dim() != 3 or table.shape[0] != q.shape[1] or table.shape[1] < meta.max_seqlen:
                raise ValueError(f"bias table {tuple(table.shape)} does not cover {q.shape[1]} heads "
                                 f"x {meta.max_seqlen} positions")
            bias = meta.extra["cpu_varlen_bias"] = (meta.bias_table, table)
        table = bias[1] if meta.bias_table is not None else None
        if "cpu_varlen_order" not in meta.extra:
            self.prepare(meta)
        left, right = window if window is not None else (-1, -1)
        if meta.causal:
            right = 0
        out = torch.empty(q.shape, dtype=q.dtype)
        with torch.profiler.record_function("cpu_varlen_attention"):  # named in profiler traces
            self._call(q, k, v, out, meta, scale, left, right, table)
        return out

    def _call(self, q, k, v, out, meta, scale, left, right, table) -> None:
        D = q.shape[-1]
        strides = (ctypes.c_int64 * 8)(q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                       v.stride(0), v.stride(1), out.stride(0), out.stride(1))
        rc = self._fn(_DTYPES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                      ctypes.addressof(strides), meta.extra["cpu_varlen_cu"].data_ptr(),
                      meta.extra["cpu_varlen_order"].data_ptr(), meta.num_seqs, q.shape[1],
                      k.shape[1], D, scale, left, right, torch.get_num_threads(),
                      self._path(q.dtype, D),
                      table.data_ptr() if table is not None else None,
                      table.stride(0) if table is not None else 0,
                      table.stride(1) if table is not None else 0)
        if rc:
            raise RuntimeError(f"cpu_varlen kernel refused H={q.shape[1]} Hkv={k.shape[1]} D={D}")

    def _path(self, dtype: torch.dtype, head_dim: int) -> int:
        path = self.bf16_path if dtype == torch.bfloat16 else "fma"
        if path == "amx" and (head_dim % 32 or head_dim > 128):
            path = "dpbf16" if dpbf16_wins() else "fma"
        return PATHS[path]

    def _per_sequence(self, q, k, v, meta, scale, window):
        if self._sdpa is None:
            logger.warning("attention backend cpu_varlen takes head dims that are multiples of 16 "
                           "up to 256 in float32/bfloat16 with contiguous heads, and a score bias "
                           "only as one shared table (AttentionMetadata.bias_table); this model's "
                           "calls (head dim %d, %s, bias %s) run per-sequence SDPA", q.shape[-1],
                           q.dtype, "without a table" if meta.bias is not None else "none")
            self._sdpa = SdpaAttention(self.device, self.dtype)
        return self._sdpa.forward(q, k, v, meta, scale, window)
