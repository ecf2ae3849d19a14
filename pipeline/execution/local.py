"""One engine in the driver's own process, for small in-memory inputs (issue 16 item 4).

Before the first text is embedded, a local Ray, one actor and its model take ~10 s to start on
a 2-core CPU, where a notebook's `pipeline.run(300 texts)` is ~2.5 s of engine work. So an
in-memory input of at most `PipelineConfig.in_process_rows` rows, when no Ray runs in this
process and none is configured (no `address=`, no RAY_ADDRESS, no cluster file of `ray start`),
runs on an `EmbedWorker` built here instead of in an actor: the same class, so the same shards,
bad-row checks, task outputs, output parts and summary, without Ray. `pipeline/execution/warm.py` keeps
the engine for the next call with the same engine settings, as it keeps warm actors.

What it gives up, by design: isolation (a crash of the engine is this process's) and restarts (a
shard that raises is retried in place `max_retries` times, then the run fails naming it, as with
actors); and it is one engine using this process's torch threads, where Ray could start several
workers on a large machine. `in_process_rows=0` (or `address="local"`) always uses Ray.
"""
from __future__ import annotations

import logging

from ..errors import BadRowsError, ShardFailedError
from .actor import EmbedWorker, RunContext
from .pool import Worker

log = logging.getLogger("pipeline")


class LocalPool:
    """The `Pool` interface the driver uses (begin, fingerprint, sample, run), with one
    in-process `EmbedWorker` built from `engine_config` instead of actors."""

    def __init__(self, worker: EmbedWorker, engine_config):
        self.worker, self.engine_config = worker, engine_config
        self.engine_fingerprint = worker.engine_fingerprint()
        self.dim = worker.engine.dim
        self.workers = [Worker(0, worker)]
        self.run_box: list = []
        self.max_retries, self.retries = 0, 0

    @classmethod
    def start(cls, engine_config) -> "LocalPool":
        return cls(EmbedWorker(engine_config, None, inline=True), engine_config)

    def begin(self, config, folder, source) -> None:
        """One run: its context (held in place of an object-store reference) and fresh stats."""
        self.max_retries, self.retries = config.max_retries, 0
        self.run_box = [RunContext(config, folder, source)]
        self.workers = [Worker(0, self.worker)]

    @property
    def healthy(self) -> bool:
        return True  # nothing restarts here: a failed run raised, and `release` dropped the pool

    def fingerprint(self, config) -> dict:
        return {"engine": self.engine_fingerprint, **config.fingerprint()}

    def sample(self, shards: list):
        """The int8 calibration sample (see `EmbedWorker.sample`)."""
        return self.worker.sample(self.run_box, shards)

    def run(self, shards: list, on_done, on_tick) -> None:
        """Process `shards` in order; each record goes to `on_done(shard, worker, record)`."""
        worker = self.workers[0]
        for shard in shards:
            record = self._process(shard)
            on_done(shard, worker, record)
            on_tick()

    def _process(self, shard) -> dict:
        attempts = 0
        while True:
            try:
                return self.worker.process(self.run_box, shard)
            except BadRowsError:
                raise  # the input's fault: retrying cannot help
            except Exception as e:  # noqa: BLE001 — as an actor's task error: retried, then named
                attempts += 1
                if attempts > self.max_retries:
                    raise ShardFailedError(f"{shard.describe()} failed {attempts} times; last error: "
                                           f"{type(e).__name__}: {e}") from e
                self.retries += 1
                log.warning("%s failed (%s: %s); retrying it", shard.describe(), type(e).__name__, e)
