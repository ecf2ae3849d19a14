"""Attention over packed variable-length sequences: the backends and the one-time selector.

    backend = select_backend(None, device, dtype)   # best that runs here, logged once
    out = backend.forward(q, k, v, meta)            # q (T, H, D), k/v (T, Hkv, D)
"""
from __future__ import annotations

import logging

import torch

from .base import AttentionBackend, AttentionMetadata, expand_kv
from .cpu_varlen import CpuVarlenAttention
from .flash import FlashAttention, TorchVarlenAttention
from .naive import NaiveAttention
from .sdpa import SdpaAttention

AttentionBackend.fallback_class = SdpaAttention  # what a backend runs for calls it cannot serve

logger = logging.getLogger(__name__)

BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.name: cls for cls in (FlashAttention, TorchVarlenAttention, CpuVarlenAttention, SdpaAttention,
                               NaiveAttention)
}
# Preference order when the caller does not choose.
# On CPU our own kernel (built with the C++ compiler on first use) and SDPA where it cannot be built.
_AUTO_ORDER = {"cuda": ("flash", "torch_varlen", "sdpa"), "cpu": ("cpu_varlen", "sdpa")}


def select_backend(name: str | None, device: torch.device, dtype: torch.dtype) -> AttentionBackend:
    """Return an instance of the named backend, or the best one that runs on `device` in `dtype`.

    Raises ValueError for an unknown name, and RuntimeError (with the reason) when the named
    backend cannot run here. Never falls back silently from an explicit choice.
    """
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
        reason = BACKENDS[name].available(device, dtype)
        if reason:
            raise RuntimeError(f"attention backend {name!r} cannot run here: {reason}")
        chosen, why = name, "requested"
    else:
        order = _AUTO_ORDER.get(device.type, ("sdpa",))
        reasons = {n: BACKENDS[n].available(device, dtype) for n in order}
        chosen = next(n for n in order if reasons[n] is None)
        skipped = [f"{n}: {r}" for n, r in reasons.items() if r and order.index(n) < order.index(chosen)]
        why = "auto" + (f"; not {'; '.join(skipped)}" if skipped else "")
    logger.info("attention backend: %s (%s; device=%s, dtype=%s)", chosen, why, device, dtype)
    return BACKENDS[chosen](device, dtype)


__all__ = ["AttentionBackend", "AttentionMetadata", "BACKENDS", "expand_kv", "select_backend"]
