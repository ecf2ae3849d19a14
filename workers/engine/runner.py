"""Device side of a step: forward over the packed batch, the workflow's head, copy back. Nothing else.

The head maps (T, hidden) states to a float32 (B, width) tensor: a dense pooler (vectors), a
sequence-classification head (logits) or an LM-head slice (yes/no scores); or, for ragged
outputs (token vectors, sparse pairs, bge-m3), to a dict of flat tensors plus per-sequence
offsets (see `ragged.py`), each copied back the same way.

A batch with query-only tokens (ColBERT query expansion, `attend: false`) runs its attention
through `QueryOnlyAttention`; every other batch through the engine's backend.

On CUDA (streams and events always of the engine's device, so `device="cuda:1"` works whatever
the process's current device) the compute stream first waits for the batch's input copies (an event recorded on the
builder's copy stream), and the pooled vectors come back through a pinned buffer with a
non-blocking copy followed by an event sync. The time from the end of the forward's launch to the
vectors being on the host is the batch's `copy_out_seconds` (on CUDA it includes waiting for the
forward's kernels to finish; on CPU it is the float32 copy alone).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from attention import AttentionBackend

from .input_builder import PackedBatch
from attention.query_only import QueryOnlyAttention


class ModelRunner:
    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, head):
        self.model = model
        self.backend = backend
        self.head = head

    @torch.inference_mode()
    def run(self, batch: PackedBatch) -> np.ndarray | dict[str, np.ndarray]:
        if batch.ready is not None:  # the engine's device's stream, whatever the current device is
            torch.cuda.current_stream(batch.input_ids.device).wait_event(batch.ready)
        backend = self.backend if batch.attended is None else \
            QueryOnlyAttention(self.backend, batch.attended, batch.attn)
        hidden = self.model(batch.input_ids, batch.positions, batch.token_type_ids, batch.attn,
                            backend)                                       # (T, hidden)
        out = self.head(hidden, batch)          # (B, width) float32, or a dict of tensors (ragged)
        start = time.perf_counter()
        if isinstance(out, dict):
            host = {name: _to_host(t) for name, t in out.items()}
            if any(t.is_cuda for t in out.values()):
                _sync(next(t for t in out.values() if t.is_cuda).device)
            result = {name: t.numpy() for name, t in host.items()}
        else:
            host = _to_host(out)
            if out.is_cuda:
                _sync(out.device)
            result = host.numpy()
        batch.copy_out_seconds = time.perf_counter() - start
        return result


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """CPU: the tensor itself. CUDA: a non-blocking copy into pinned memory (valid after `_sync`)."""
    if not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _sync(device: torch.device) -> None:
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    done.synchronize()
