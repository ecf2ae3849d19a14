"""The transformers fallback body: a model transformers implements natively, behind the packed
interface every native body has, run as padded, length-sorted batches (packing is off).

`forward(input_ids, positions, token_type_ids, meta, backend) -> (T, width)` takes the packed
batch the engine built, sorts its sequences by length, cuts them into padded sub-batches of at
most `max_num_batched_tokens` padded tokens, runs transformers with an attention mask, and puts
the real tokens' rows back in packed order, so the workflow's head (pooling on real tokens only,
Dense modules, normalize, Matryoshka) is the native path's own. A sequence classifier's logits
(B, labels) are repeated over its tokens; its head reads the first one.

Only classes transformers ships are ever built: never `trust_remote_code`, never a folder's own
Python (a config whose architecture exists only through `auto_map` is refused).
"""
from __future__ import annotations

import numpy as np
import torch
import transformers
from torch import nn

from .model_folder import ModelFolder


def native_class_name(folder: ModelFolder) -> str:
    """The architecture transformers will build, checked to be one of its own classes."""
    arch = folder.architecture
    if arch and not isinstance(getattr(transformers, arch, None), type):
        custom = " (only through the folder's own code, auto_map)" if getattr(
            folder.hf_config, "auto_map", None) else ""
        raise ValueError(f"architecture {arch!r} of {folder.path} is not implemented by transformers "
                         f"{transformers.__version__}{custom}; custom modeling code is never run. Use "
                         "a folder whose config.json names a transformers architecture")
    return arch or f"{folder.hf_config.model_type} (no architectures in config.json)"


class TransformersModel(nn.Module):
    """A transformers model (AutoModel, or AutoModelForSequenceClassification when `logits`)
    run padded; returns (T, hidden) last hidden states, or (T, num_labels) repeated logits."""

    def __init__(self, folder: ModelFolder, logits: bool, dtype: torch.dtype, device: torch.device,
                 max_num_batched_tokens: int = 4096):
        super().__init__()
        native_class_name(folder)
        auto = transformers.AutoModelForSequenceClassification if logits else transformers.AutoModel
        self.hf = auto.from_pretrained(str(folder.path), trust_remote_code=False, dtype=dtype).to(device)
        cfg = self.hf.config
        self.logits = logits
        self.budget = max_num_batched_tokens
        self.pad_id = cfg.pad_token_id if isinstance(cfg.pad_token_id, int) else 0
        self.uses_token_types = (getattr(cfg, "type_vocab_size", 0) or 0) > 1
        limit = getattr(cfg, "max_position_embeddings", None) or 1 << 20
        # RoBERTa-style position ids start after padding_idx: two positions are never usable.
        self.max_length = limit - (cfg.pad_token_id + 1 if cfg.model_type in ("roberta", "xlm-roberta",
                                                                             "camembert") else 0)

    def with_budget(self, max_num_batched_tokens: int) -> "TransformersModel":
        """Padded tokens per transformers call (the engine's resolved token budget)."""
        self.budget = max_num_batched_tokens
        return self

    def forward(self, input_ids, positions, token_type_ids, meta, backend) -> torch.Tensor:
        cu = meta.cu_seqlens.long()
        lens = cu[1:] - cu[:-1]                                            # (B,)
        out = None
        for group in _groups(lens.cpu().numpy(), self.budget):
            seqs = torch.as_tensor(group, device=input_ids.device)
            values = self._run(input_ids, token_type_ids, cu[seqs], lens[seqs])  # (b, L, W) / (b, W)
            out = out if out is not None else values.new_empty(input_ids.shape[0], values.shape[-1])
            if self.logits:                                                # every token: its logits
                out[_rows(cu[seqs], lens[seqs])] = values.repeat_interleave(lens[seqs], 0)
            else:                                                          # real tokens only
                mask = _mask(lens[seqs], values.shape[1])
                out[_rows(cu[seqs], lens[seqs])] = values[mask]
        return out

    def _run(self, input_ids, token_type_ids, starts, lens) -> torch.Tensor:
        L = int(lens.max())
        mask = _mask(lens, L)                                              # (b, L) bool
        src = (starts[:, None] + torch.arange(L, device=lens.device)).clamp(max=input_ids.shape[0] - 1)
        kwargs = dict(input_ids=torch.where(mask, input_ids[src], self.pad_id),
                      attention_mask=mask.long())
        if self.uses_token_types:
            kwargs["token_type_ids"] = (torch.zeros_like(kwargs["input_ids"]) if token_type_ids is None
                                        else torch.where(mask, token_type_ids[src], 0))
        output = self.hf(**kwargs)
        return output.logits if self.logits else output.last_hidden_state


def _groups(lens: np.ndarray, budget: int) -> list[list[int]]:
    """Sequence indices sorted by length (longest first), cut so each group's padded size
    (count x its longest) stays within `budget` tokens; one long sequence is a group alone."""
    groups, current = [], []
    for i in np.argsort(-lens, kind="stable").tolist():
        if current and (len(current) + 1) * int(lens[current[0]]) > budget:
            groups.append(current)
            current = []
        current.append(i)
    return groups + [current] if current else groups


def _mask(lens: torch.Tensor, L: int) -> torch.Tensor:
    return torch.arange(L, device=lens.device)[None, :] < lens[:, None]  # (b, L)


def _rows(starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Packed row indices of the sequences' tokens, sequence by sequence: (sum(lens),)."""
    L = int(lens.max())
    rows = starts[:, None] + torch.arange(L, device=lens.device)
    return rows[_mask(lens, L)]
