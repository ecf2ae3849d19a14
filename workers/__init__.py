"""What runs inside one worker: the prefill-only embedding engine and its parts."""
from .config import EngineConfig
from .engine import Engine, EngineStats, preflight
from .model_folder import folder_task

__all__ = ["Engine", "EngineConfig", "EngineStats", "folder_task", "preflight"]
