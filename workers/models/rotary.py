"""Rotary position embeddings (RoPE) over packed tokens, with the HF `rope_scaling` variants.

`Rotary(cfg, head_dim)` reads `rope_theta` and the scaling dict from either the transformers-5
`rope_parameters` or the older `rope_theta` + `rope_scaling` attributes, computes the inverse
frequencies once (on the CPU, so it works under a meta-device constructor), and per batch gives
cos/sin for the packed `positions`. Supported `rope_type`s: default, linear, dynamic, llama3,
yarn. "dynamic" (NTK) rescales only past `max_position_embeddings`; the engine never runs that
far (max_length is capped at it), so for a prefill-only engine it equals the default.
"""
from __future__ import annotations

import math

import torch


def rope_parameters(cfg) -> dict:
    """The rope dict with `rope_type` and `rope_theta` filled, from either config generation."""
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return params


def _default(p: dict, dim: int, cfg) -> tuple[torch.Tensor, float]:
    # The same expression as transformers, so float32 results agree bit for bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (p["rope_theta"] ** exponents), 1.0


def _linear(p: dict, dim: int, cfg) -> tuple[torch.Tensor, float]:
    inv_freq, _ = _default(p, dim, cfg)
    return inv_freq / p["factor"], 1.0


def _llama3(p: dict, dim: int, cfg) -> tuple[torch.Tensor, float]:
    inv_freq, _ = _default(p, dim, cfg)
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p.get("original_max_position_embeddings", cfg.max_position_embeddings)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(p: dict, dim: int, cfg) -> tuple[torch.Tensor, float]:
    base = p["rope_theta"]
    old_len = p.get("original_max_position_embeddings", cfg.max_position_embeddings)
    factor = p.get("factor") or cfg.max_position_embeddings / old_len
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = p.get("mscale"), p.get("mscale_all_dim")
        attention_factor = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
                            if mscale and mscale_all else _yarn_mscale(factor))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp                  # 1: keep the original frequency, 0: interpolate
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


ROPE_TYPES = {"default": _default, "linear": _linear, "dynamic": _default,
              "llama3": _llama3, "yarn": _yarn}


class Rotary:
    """Per-model RoPE: `cos_sin(positions)` once per batch, `apply(x, cos, sin)` per q/k."""

    def __init__(self, cfg, head_dim: int):
        p = rope_parameters(cfg)
        kind = p["rope_type"]
        if kind not in ROPE_TYPES:
            raise ValueError(f"rope_type={kind!r} is not supported; supported: {sorted(ROPE_TYPES)}")
        if p.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"partial_rotary_factor={p['partial_rotary_factor']} is not supported; "
                             "only full rotary embeddings (1.0)")
        self.inv_freq, self.attention_factor = ROPE_TYPES[kind](p, head_dim, cfg)  # (D/2,) fp32
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) positions -> cos, sin of shape (T, 1, D/2) in `dtype` (computed in float32)."""
        inv = self._on_device.get(positions.device)
        if inv is None:
            inv = self._on_device[positions.device] = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * inv[None, :]                    # (T, D/2)
        cos, sin = freqs.cos(), freqs.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate (T, h, D) by the half-split convention of HF Llama/Qwen/Mistral:
        [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin], written straight into one new tensor."""
        x1, x2 = x.chunk(2, dim=-1)                                          # (T, h, D/2) each
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        o1, o2 = out.chunk(2, dim=-1)
        torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
        return out
