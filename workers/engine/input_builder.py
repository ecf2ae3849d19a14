"""CPU side of a step: turn scheduled requests into one packed batch with no padding.

Everything is built with a handful of NumPy calls (no Python loop per token); the attention
backend's per-batch plan is computed here too, so the device side only runs the model.

On CUDA the host arrays go through pinned memory and are copied on a side stream owned by the
builder (it runs on the producer thread in the double-buffered loop, so batch k+1's copy overlaps
batch k's forward); an event recorded after the copies is what the compute stream waits on (see
`runner.py`). The batch's device tensors are freed only after the runner has synchronized on its
output, so no cross-stream reuse of their memory can happen (no `record_stream` needed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from attention import AttentionBackend, AttentionMetadata

from ..inputs.token_flags import KEEP, QUERY_ONLY
from .scheduler import Request


@dataclass
class PackedBatch:
    indices: np.ndarray              # (B,) caller positions of the requests, batch order
    input_ids: torch.Tensor          # (T,) int64
    positions: torch.Tensor          # (T,) int64, restarting at 0 for each sequence
    token_type_ids: torch.Tensor | None  # (T,) per-token types (0/1 in a pair), for models with
                                         # token-type embeddings; None for the others
    seq_ids: torch.Tensor            # (T,) int64: which sequence each token belongs to
    seqlens: torch.Tensor            # (B,) int64
    attn: AttentionMetadata          # cu_seqlens (B+1,), max_seqlen, backend plan
    pool_starts: torch.Tensor | None = None  # (B,) int64 first pooled position; None: all 0
    keep: torch.Tensor | None = None         # (T,) bool: tokens a token-level head emits; None: all
    attended: torch.Tensor | None = None     # (T,) bool: tokens other tokens attend to; None: all
    segments: torch.Tensor | None = None     # (T,) int64 piece of the batch per token, -1: none
    piece_offsets: torch.Tensor | None = None  # (B+1,) int64: sequence b's pieces are [o[b], o[b+1])
    num_pieces: int = 0                      # pieces in the batch (host-side count)
    ready: "torch.cuda.Event | None" = None  # CUDA: recorded on the copy stream after the inputs
    copy_in_seconds: float = 0.0     # host time pinning and issuing the input copies
    copy_out_seconds: float = 0.0    # set by the runner: waiting for and copying the vectors back


class InputBuilder:
    def __init__(self, backend: AttentionBackend, device: torch.device, causal: bool,
                 token_types: bool):
        self.backend = backend
        self.device = device
        self.causal = causal
        self.token_types = token_types
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._copy_seconds = 0.0

    def build(self, requests: list[Request]) -> PackedBatch:
        if self.copy_stream is None:
            return self._build(requests)
        with torch.cuda.stream(self.copy_stream):
            batch = self._build(requests)
            batch.ready = torch.cuda.Event()
            batch.ready.record(self.copy_stream)
        return batch

    def _build(self, requests: list[Request]) -> PackedBatch:
        self._copy_seconds = 0.0
        lens = np.fromiter((r.num_tokens for r in requests), dtype=np.int64, count=len(requests))
        T = int(lens.sum())
        ids = np.concatenate([r.ids for r in requests])                     # (T,)
        starts = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        seq_ids = np.repeat(np.arange(len(lens)), lens)                   # (T,)
        positions = np.arange(T, dtype=np.int64) - starts[seq_ids]        # (T,)
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)      # (B+1,)
        put = self._to_device
        meta = AttentionMetadata(cu_seqlens=put(cu), max_seqlen=int(lens.max()),
                                 seqlens=lens.tolist(), causal=self.causal)
        return PackedBatch(
            indices=np.fromiter((r.index for r in requests), dtype=np.int64, count=len(requests)),
            input_ids=put(ids),
            positions=put(positions),
            token_type_ids=self._token_types(requests, T),
            seq_ids=put(seq_ids),
            seqlens=put(lens),
            attn=self.backend.prepare(meta),
            pool_starts=self._pool_starts(requests),
            **self._token_flags(requests),
            **self._segments(requests),
            copy_in_seconds=self._copy_seconds,
        )

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """CPU: a zero-copy view. CUDA: through pinned memory, so the copy does not block the host."""
        t = torch.from_numpy(array)
        if self.device.type != "cuda":
            return t
        start = time.perf_counter()
        out = t.pin_memory().to(self.device, non_blocking=True)
        self._copy_seconds += time.perf_counter() - start
        return out

    def _token_types(self, requests: list[Request], T: int) -> torch.Tensor | None:
        if not self.token_types:
            return None
        if all(r.type_ids is None for r in requests):
            return torch.zeros(T, dtype=torch.int64, device=self.device)
        return self._to_device(np.concatenate([                               # (T,)
            np.zeros(r.num_tokens, dtype=np.int64) if r.type_ids is None else r.type_ids
            for r in requests]))

    def _token_flags(self, requests: list[Request]) -> dict:
        """`keep` and `attended` masks from the requests' token flags; None where all are set."""
        if all(r.flags is None for r in requests):
            return {}
        flags = np.concatenate([np.full(r.num_tokens, KEEP, dtype=np.uint8) if r.flags is None
                                else r.flags for r in requests])                # (T,)
        keep, hidden = (flags & KEEP) != 0, (flags & QUERY_ONLY) != 0
        return {"keep": None if keep.all() else self._to_device(keep),
                "attended": self._to_device(~hidden) if hidden.any() else None}

    def _segments(self, requests: list[Request]) -> dict:
        """Span pieces (late chunking): each request's local piece ids shifted past the pieces
        of the requests before it, and the pieces' offsets per sequence; {} when none has any."""
        if all(r.segments is None for r in requests):
            return {}
        counts = np.fromiter((0 if r.segments is None else int(r.segments.max(initial=-1)) + 1
                              for r in requests), dtype=np.int64, count=len(requests))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)      # (B+1,)
        segments = np.concatenate([np.full(r.num_tokens, -1, dtype=np.int64) if r.segments is None
                                   else np.where(r.segments >= 0, r.segments + offsets[b], -1)
                                   for b, r in enumerate(requests)])               # (T,)
        return {"segments": self._to_device(segments), "piece_offsets": self._to_device(offsets),
                "num_pieces": int(offsets[-1])}

    def _pool_starts(self, requests: list[Request]) -> torch.Tensor | None:
        starts = np.fromiter((r.pool_start for r in requests), dtype=np.int64, count=len(requests))
        return self._to_device(starts) if starts.any() else None
