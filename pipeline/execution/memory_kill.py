"""A worker Ray killed for memory, told as such (issue 24).

Ray's memory monitor kills a worker when its node's memory use passes a threshold (95% by
default): the driver then gets `ray.exceptions.OutOfMemoryError`, or an actor-death error whose
text holds the monitor's report ("... killed due to the node running low on memory. Memory on
the node (IP: ..., ID: ...) was 7.51GB used / 7.80GB limit (0.96)" and "OOM kill reason: ...").
Without this the run ended as a shard that failed, or a worker given up because "its node left
the cluster, or no node has room", memory never mentioned. `explain` turns such a text into one
line with Ray's figures and what to change; any other text is left as it is. A worker killed
by the kernel's OOM killer is not recognised: Ray reports it only as a worker that exited
(it names OOM as one cause among several), so that message is passed on unchanged.
"""
from __future__ import annotations

import re

_MARKERS = ("running low on memory", "OOM kill reason", "OutOfMemoryError", "NODE_OUT_OF_MEMORY")
_FIGURES = re.compile(r"Memory on the node \(IP: ([^,]+), ID: [0-9a-f]*\) was ([\d.]+)GB used / "
                      r"([\d.]+)GB limit")
_REASON = re.compile(r"OOM kill reason: ([^\n]+)")
FIX = ("run fewer workers (num_workers= / --num-workers) or smaller batches "
       "(max_num_batched_tokens= / --batch-tokens; a shorter max_length helps too), or give the "
       "node more memory")


def killed_for_memory(text: str) -> bool:
    return any(marker in text for marker in _MARKERS)


def explain(text: str) -> str | None:
    """One line for a worker Ray killed for memory: the node, its use and limit, Ray's reason
    and the fix; None when `text` is not such a report."""
    if not killed_for_memory(text):
        return None
    figures = _FIGURES.search(text)
    used = (f": node {figures.group(1)} had {figures.group(2)} GB in use of a {figures.group(3)} GB "
            "limit") if figures else ""
    reason = _REASON.search(text)
    why = f" ({reason.group(1).strip()})" if reason else ""
    return f"Ray killed the worker for memory{used}{why}; {FIX}"


def describe(error: BaseException) -> str:
    """`TypeName: first line` of an error, or its memory explanation when Ray killed a worker."""
    text = str(error)
    explained = explain(text)
    if explained is not None:
        return explained
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
