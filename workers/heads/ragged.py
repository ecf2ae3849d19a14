"""Ragged outputs: a head that emits a variable number of values per sequence returns flat
tensors plus per-sequence offsets, never padding; the engine splits them per input on the host.

A head's dict, per batch of B sequences (batch order), copied to the host by the runner:

    tokens:  values (N, d) float32, offsets (B+1,) int64     -> one (L_i, d) array per input
    sparse:  indices (N,) int32, values (N,) float32,
             offsets (B+1,) int64                            -> one (indices, values) per input
    bge_m3:  dense (B, d); sparse_indices, sparse_values, sparse_offsets; colbert (N, d),
             colbert_offsets                                 -> one dict per input
    chunks:  values (P, H) float32 piece sums, offsets (B+1,) -> one (P_b, H) array per input

Rows of sequence b are `[offsets[b], offsets[b+1])`. The execute loops pass the dict through
untouched, so both loops (and chunk-free batching) serve ragged heads as they serve dense ones.
`SPLITTERS[output]` maps one batch's dict to its per-input pieces, in batch order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def offsets_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(B,) counts -> (B+1,) int64 offsets starting at 0."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).long()


def segment_counts(seq_ids: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Rows per sequence of a flat selection whose rows belong to `seq_ids` (sorted)."""
    return torch.bincount(seq_ids, minlength=num_seqs)


def split_rows(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Views of `values` per sequence: [values[offsets[b]:offsets[b+1]] for each b]."""
    return np.split(values, offsets[1:-1])


def _tokens(out: dict[str, np.ndarray]) -> list[np.ndarray]:
    return split_rows(out["values"], out["offsets"])


def _sparse(out: dict[str, np.ndarray], prefix: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    offsets = out[prefix + "offsets"]
    return list(zip(split_rows(out[prefix + "indices"], offsets), split_rows(out[prefix + "values"], offsets)))


def _bge_m3(out: dict[str, np.ndarray]) -> list[dict]:
    sparse = _sparse(out, "sparse_")
    colbert = split_rows(out["colbert"], out["colbert_offsets"])
    return [{"dense": d, "sparse": s, "colbert": c} for d, s, c in zip(out["dense"], sparse, colbert)]


SPLITTERS: dict[str, Callable[[dict[str, np.ndarray]], list]] = {
    "tokens": _tokens, "sparse": _sparse, "bge_m3": _bge_m3,
    "chunks": _tokens,  # late chunking's piece sums: values (P, H), offsets (B+1,) -> (P_b, H) each
}


def top_k_sparse(indices: np.ndarray, values: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the `k` largest values (ties: the lower index), still sorted by index."""
    if k is None or len(values) <= k:
        return indices, values
    order = np.lexsort((indices, -values))[:k]   # by value descending, then index
    order.sort()                                 # back to index order (indices are sorted)
    return indices[order], values[order]
