"""GPU token budget fallbacks, on any machine: every retry after an out-of-memory error is
smaller than the batch that just failed, and the floor is never crossed."""
import pytest
import torch

from workers.engine.memory import largest_that_runs


def _card(fits_up_to: int, tried: list):
    def run(tokens: int) -> None:
        tried.append(tokens)
        if tokens > fits_up_to:
            raise torch.cuda.OutOfMemoryError(f"{tokens} tokens do not fit")
    return run


def test_halves_from_the_failed_size_until_one_runs():
    tried = []
    assert largest_that_runs(_card(5000, tried), 32768, floor=512) == 4096
    assert tried == [32768, 16384, 8192, 4096]
    assert all(b < a for a, b in zip(tried, tried[1:]))


def test_stops_at_the_floor_and_reraises_there():
    tried = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        largest_that_runs(_card(100, tried), 2048, floor=512)
    assert tried == [2048, 1024, 512]


def test_other_errors_are_not_retried():
    def broken(tokens):
        raise ValueError("not a memory problem")
    with pytest.raises(ValueError):
        largest_that_runs(broken, 4096, floor=256)
