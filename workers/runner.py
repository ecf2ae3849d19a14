"""Device side of a step: forward over the packed batch, the workflow's head, copy back. Nothing else.

The head maps (T, hidden) states to a float32 (B, width) array: a dense pooler (vectors), a
sequence-classification head (logits) or an LM-head slice (yes/no scores).

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


class ModelRunner:
    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, head):
        self.model = model
        self.backend = backend
        self.head = head

    @torch.inference_mode()
    def run(self, batch: PackedBatch) -> np.ndarray:
        if batch.ready is not None:  # the engine's device's stream, whatever the current device is
            torch.cuda.current_stream(batch.input_ids.device).wait_event(batch.ready)
        hidden = self.model(batch.input_ids, batch.positions, batch.token_type_ids, batch.attn,
                            self.backend)                                  # (T, hidden)
        pooled = self.head(hidden, batch)                                  # (B, width) float32
        start = time.perf_counter()
        if pooled.is_cuda:
            host = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
            host.copy_(pooled, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(pooled.device))
            done.synchronize()
            vectors = host.numpy()
        else:
            vectors = pooled.numpy()
        batch.copy_out_seconds = time.perf_counter() - start
        return vectors
