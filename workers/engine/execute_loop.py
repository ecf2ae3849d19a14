"""Execute loops: how CPU batch building and device execution are interleaved.

Both take an iterator of packed batches (the CPU side: tokenize, schedule, build — see
feeder.py) and the runner (the device side), and yield (indices, vectors) per batch, in batch
order. Both give the same vectors.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

import numpy as np

from .input_builder import PackedBatch
from .runner import ModelRunner

DEPTH = 2  # batches in flight in the double-buffered loop: one running, one built or building


def simple_loop(batches: Iterator[PackedBatch], runner: ModelRunner,
                stats) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """1. build the next batch (CPU); 2. run it (device); 3. yield its vectors; repeat."""
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        stats.idle_seconds += time.perf_counter() - t  # the device waits while the CPU builds
        if batch is None:
            return
        t = time.perf_counter()
        vectors = runner.run(batch)
        _device_time(stats, batch, time.perf_counter() - t)
        yield batch.indices, vectors


def _device_time(stats, batch: PackedBatch, seconds: float) -> None:
    """Split one runner call's wall time into forward and copy-out."""
    stats.copy_out_seconds += batch.copy_out_seconds
    stats.forward_seconds += seconds - batch.copy_out_seconds
    stats.batches += 1


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def double_buffer_loop(batches: Iterator[PackedBatch], runner: ModelRunner,
                       stats) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Build batch k+1 on a producer thread while batch k runs.

    1. the producer takes a slot (at most DEPTH batches exist that are not finished), advances
       the batch iterator (tokenize, schedule, build) and queues the batch;
    2. the caller's thread takes it from the queue (time spent waiting is compute idle time),
       runs it, frees the slot, and yields the vectors;
    3. an exception on either side stops both: a producer error is re-raised here with its
       traceback; if the caller stops early or fails, the producer is told to stop and joined.
    """
    slots, ready, stop = threading.Semaphore(DEPTH), queue.Queue(), threading.Event()

    def produce():
        try:
            while True:
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                batch = next(batches, _DONE)
                ready.put(batch)
                if batch is _DONE:
                    return
        except BaseException as e:  # noqa: BLE001 — handed to the caller's thread, not swallowed
            ready.put(_Failed(e))

    producer = threading.Thread(target=produce, name="engine-input-builder", daemon=True)
    producer.start()
    try:
        while True:
            t = time.perf_counter()
            item = ready.get()
            stats.idle_seconds += time.perf_counter() - t
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            t = time.perf_counter()
            vectors = runner.run(item)
            _device_time(stats, item, time.perf_counter() - t)
            slots.release()
            yield item.indices, vectors
    finally:
        stop.set()
        producer.join(timeout=30)


EXECUTE_LOOPS: dict[str, Callable] = {"simple": simple_loop, "double_buffer": double_buffer_loop}
