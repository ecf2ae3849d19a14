"""What runs inside one worker: the prefill-only embedding engine and its parts.

    config.py    EngineConfig: what one engine serves, validated on construction
    workflow.py  the table of every task: input processor, head, output, attention
    engine/      the step loop and the Engine API      inputs/   user items -> token ids
    heads/       hidden states -> the task's numbers    loading/  model folders and weights
    quant/       int8 weights                           models/   packed model bodies

`pipeline/` imports only the names exported here.
"""
from .config import EngineConfig
from .engine.engine import Engine, EngineStats
from .engine.startup import preflight, preflight_fingerprint
from .inputs.input_processor import TextTooLongError
from .loading.model_folder import folder_task
from .loading.resolve import query_prompt_name, token_row_shape

__all__ = ["Engine", "EngineConfig", "EngineStats", "TextTooLongError", "folder_task", "preflight", "preflight_fingerprint",
           "query_prompt_name", "token_row_shape"]
