"""Masks the mask-taking backends (sdpa, naive) build from the interface's window and causality.

A band is translation invariant, so one (L_max, L_max) mask per batch serves every sequence as
its top-left (L, L) corner.
"""
from __future__ import annotations

import torch

from .base import Window


def band(n: int, window: Window | None, causal: bool, device) -> torch.Tensor | None:
    """(n, n) bool, True where query i may see key j; None when every pair may (no mask)."""
    if window is None and not causal:
        return None
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return allowed
