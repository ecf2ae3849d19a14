"""Device side of a step: forward over the packed batch, pool, copy back. Nothing else."""
from __future__ import annotations

import numpy as np
import torch

from attention import AttentionBackend

from .input_builder import PackedBatch
from .pooling import Pooler


class ModelRunner:
    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, pooler: Pooler):
        self.model = model
        self.backend = backend
        self.pooler = pooler

    @torch.inference_mode()
    def run(self, batch: PackedBatch) -> np.ndarray:
        hidden = self.model(batch.input_ids, batch.positions, batch.token_type_ids, batch.attn,
                            self.backend)                                  # (T, hidden)
        return self.pooler(hidden, batch).cpu().numpy()                    # (B, dim) float32
