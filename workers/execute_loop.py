"""Execute loops: how CPU batch building and device execution are interleaved.

`simple`: schedule, build, run, collect, repeat — one batch at a time. (The double-buffered loop
plugs in here with the same signature.) A loop yields (indices, vectors) per batch, in batch order.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .input_builder import InputBuilder
from .runner import ModelRunner
from .scheduler import Scheduler


def simple_loop(scheduler: Scheduler, builder: InputBuilder, runner: ModelRunner,
                drain: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """1. pop a batch from the scheduler; 2. build it on the CPU; 3. run it; 4. yield; repeat.

    With drain=False the loop stops while the waiting requests cannot fill a whole batch, so the
    caller can add more input first (no half-empty batches between input chunks).
    """
    while drain or scheduler.has_full_batch():
        requests = scheduler.schedule()
        if not requests:
            return
        batch = builder.build(requests)
        yield batch.indices, runner.run(batch)


EXECUTE_LOOPS: dict[str, Callable] = {"simple": simple_loop}
