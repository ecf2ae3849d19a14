"""Workflows: which modules one kind of model needs, picked per model family.

A workflow names the scheduler, the input processor, whether attention is causal, the default
pooling and the execute loop. Three exist: encoder (BERT family), decoder (causal, last-token
pooling) and decoder_bidirectional (LLM2Vec-style, mean pooling). A new capability is a new module plugged into a workflow, not a
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
# Decoder retrievers (Qwen3-Embedding, gte-Qwen2, e5-mistral): causal, the last token pools.
DECODER = Workflow("decoder", InputProcessor, Scheduler, causal=True, default_pooling="last",
                   execute_loops=EXECUTE_LOOPS)
# Decoders switched to bidirectional attention (LLM2Vec): every token sees every other; mean.
BIDIRECTIONAL_DECODER = Workflow("decoder_bidirectional", InputProcessor, Scheduler, causal=False,
                                 default_pooling="mean", execute_loops=EXECUTE_LOOPS)

WORKFLOWS = {w.name: w for w in (ENCODER, DECODER, BIDIRECTIONAL_DECODER)}


def select_workflow(family: str, bidirectional: bool | None, architecture: str) -> Workflow:
    """The workflow of a model family ("encoder" or "decoder"); for decoders, `bidirectional`
    (the resolved enable_bidirectional) picks the bidirectional variant."""
    if family == "encoder":
        if bidirectional is False:
            raise ValueError(f"enable_bidirectional=False asks for causal attention, but "
                             f"{architecture} is a bidirectional encoder; leave it None")
        return ENCODER
    return BIDIRECTIONAL_DECODER if bidirectional else WORKFLOWS[family]
