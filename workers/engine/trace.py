"""The profile switch: a torch profiler trace of a few engine batches, written as Chrome JSON."""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


class TraceWindow:
    """The profile switch: a torch profiler trace of a few batches, once per engine.

    The window opens at the engine's second batch (the first is warm-up), whichever `embed`
    call it falls in, and closes after `batches` batches or when that call ends; the Chrome
    trace goes to `<folder>/engine-<pid>-<n>.json` (`.path` once written). Ops on the caller's
    thread are recorded (forward, pooling, copies); CUDA kernels too on a GPU.
    """

    def __init__(self, folder: str | None, batches: int, device: torch.device):
        self.folder, self.batches, self.device = folder, batches, device
        self.path: str | None = None
        self.seen = 0  # batches this engine has run, over all calls

    def wrap(self, results):
        if self.folder is None or self.path is not None:
            yield from results
            return
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        prof, profiled = None, 0
        try:
            for item in results:
                if prof is None and self.path is None and self.seen >= 1:
                    prof = profile(activities=activities)
                    prof.start()
                self.seen += 1
                if prof is not None:
                    profiled += 1
                    if profiled > self.batches:
                        self._write(prof, profiled - 1)
                        prof = None
                yield item
        finally:
            if prof is not None:
                self._write(prof, profiled)

    def _write(self, prof, batches: int) -> None:
        prof.stop()
        os.makedirs(self.folder, exist_ok=True)
        n = 0
        while os.path.exists(path := os.path.join(self.folder, f"engine-{os.getpid()}-{n}.json")):
            n += 1
        prof.export_chrome_trace(path)
        self.path = path
        logger.info("profiler trace of %d batch(es) written to %s", batches, path)
