"""Workflows: which modules one kind of model needs, picked per model family.

A workflow names the scheduler, the input processor, whether attention is causal, the default
pooling and the execute loop. A new capability is a new module plugged into a workflow, not a
flag threaded through a shared path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .execute_loop import EXECUTE_LOOPS
from .input_processor import InputProcessor
from .scheduler import Scheduler


@dataclass(frozen=True)
class Workflow:
    name: str
    input_processor: type[InputProcessor]
    scheduler: type[Scheduler]
    causal: bool
    default_pooling: str
    execute_loops: dict[str, Callable]


ENCODER = Workflow("encoder", InputProcessor, Scheduler, causal=False, default_pooling="cls",
                   execute_loops=EXECUTE_LOOPS)

WORKFLOWS = {"encoder": ENCODER}
