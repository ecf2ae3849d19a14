"""What runs inside one worker: the prefill-only embedding engine and its parts."""
from .config import EngineConfig
from .engine import Engine, EngineStats

__all__ = ["Engine", "EngineConfig", "EngineStats"]
