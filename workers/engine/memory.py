"""Token budget from GPU memory: profile the activations of one batch, then size the budget.

On CUDA with no `max_num_batched_tokens`, the engine runs one profile batch of max_length
sequences (the worst case per token: attention scratch grows with sequence length), measures
the peak memory it allocates above the weights, and takes the largest budget whose activations
fit in `gpu_memory_utilization` of the card, counting what is already in use (the weights, other
processes). A batch at that budget is then run once to prove it; if it still runs out of memory
the budget is halved until one runs (and the profile batch itself halves if it does not fit). Activation memory is linear in the tokens of a packed batch
of fixed-length sequences (no padding, no KV cache), which is what makes one profile enough.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .scheduler import Request

logger = logging.getLogger(__name__)

PROFILE_TOKENS = 8192     # tokens in the profile batch (rounded to whole max_length sequences)
MAX_BUDGET = 1 << 17      # beyond ~128k tokens a batch is no faster and only holds more memory
_ALIGN = 256


class MemoryBudgetError(RuntimeError):
    """The card cannot hold even one max_length text within gpu_memory_utilization."""


def budget_from_profile(free_bytes: int, total_bytes: int, utilization: float,
                        activation_bytes: int, profile_tokens: int, max_length: int,
                        cap: int = MAX_BUDGET) -> int:
    """The largest token budget (a multiple of 256, at most `cap`) whose activations fit.

    `free_bytes`/`total_bytes` are the card's (after loading the weights, before profiling);
    `activation_bytes` is the profile batch's peak allocation above what was allocated before it.
    """
    used = total_bytes - free_bytes
    allowed = utilization * total_bytes - used
    gib = 1 << 30
    if allowed <= 0:
        raise MemoryBudgetError(
            f"gpu_memory_utilization={utilization} allows {utilization * total_bytes / gib:.1f} GiB "
            f"but {used / gib:.1f} GiB of the card's {total_bytes / gib:.1f} GiB are already in use "
            "(weights and other processes); raise gpu_memory_utilization or free the GPU")
    per_token = max(activation_bytes, 1) / profile_tokens
    budget = min(int(allowed // per_token), cap) // _ALIGN * _ALIGN
    if budget < max_length:
        raise MemoryBudgetError(
            f"one text of max_length={max_length} tokens needs about "
            f"{per_token * max_length / gib:.2f} GiB of activations but only "
            f"{allowed / gib:.2f} GiB fit under gpu_memory_utilization={utilization}; lower "
            "max_length, raise gpu_memory_utilization, or set max_num_batched_tokens")
    return max(budget, max_length)


def largest_that_runs(run, size: int, floor: int) -> int:
    """Call `run(size)`, halving `size` (to a multiple of 256, never below `floor`) after each
    CUDA out-of-memory error; return the size that ran. An OOM at `floor` is re-raised."""
    while True:
        try:
            run(size)
            return size
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size <= floor:
                raise
            size = max(floor, size // 2 // _ALIGN * _ALIGN)


def profile_token_budget(engine) -> int:
    """Profile `engine` (on CUDA, fully built) and return the token budget it should use.

    The profile batch itself (PROFILE_TOKENS, as whole max_length sequences) halves on an OOM
    down to one sequence, and a budget that then fails to run halves from there: every fallback
    is smaller than the batch that just failed. One max_length sequence that does not fit is a
    MemoryBudgetError naming the fixes.
    """
    device, r = engine.resolved.device, engine.resolved
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run = lambda tokens: _run_dummy(engine, max(1, tokens // r.max_length), r.max_length)  # noqa: E731
    try:
        profiled = largest_that_runs(run, max(PROFILE_TOKENS // r.max_length, 1) * r.max_length, r.max_length)
    except torch.cuda.OutOfMemoryError as e:
        raise MemoryBudgetError(
            f"one text of max_length={r.max_length} tokens does not fit on {device} next to the "
            "weights; lower max_length, use a smaller dtype, or free the GPU") from e
    activation = torch.cuda.max_memory_allocated(device) - before
    budget = budget_from_profile(free, total, engine.config.gpu_memory_utilization, activation,
                                 profiled, r.max_length)
    budget = largest_that_runs(run, budget, r.max_length)
    torch.cuda.empty_cache()
    logger.info("token budget %d from a profile: %.1f MiB of activations per 1k tokens, %.1f of "
                "%.1f GiB free before profiling, gpu_memory_utilization=%s", budget,
                activation / profiled * 1024 / (1 << 20), free / (1 << 30),
                total / (1 << 30), engine.config.gpu_memory_utilization)
    return budget


def _run_dummy(engine, seqs: int, length: int) -> None:
    """One forward over `seqs` sequences of `length` tokens (the model's first normal token id)."""
    ids = np.full(length, 1000 % engine.folder.hf_config.vocab_size, dtype=np.int64)
    batch = engine.builder.build([Request(i, ids) for i in range(seqs)])
    engine.runner.run(batch)
