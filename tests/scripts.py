"""Run a script of this repository (a benchmark, a job) in the test's own process, as
`python SCRIPT ARGS` would, and return what it printed.

A subprocess pays Python's start and the imports of torch, transformers and the script's peers
(sentence-transformers: ~6 s of CPU) again for every run; this process has them already. The
script still runs whole: as `__main__`, with `sys.argv` set, its exit status checked. What a
script may change for the rest of the process is put back: sys.argv, sys.path and torch's
thread count.
"""
from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str | Path, *args: str) -> str:
    """stdout of `python ROOT/script args` run here; an exit status other than 0 raises."""
    import torch
    path = ROOT / script
    saved = sys.argv, list(sys.path), torch.get_num_threads()
    out = io.StringIO()
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))  # as `python path` puts the script's folder first
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise AssertionError(f"{script} exited {e.code!r}; it printed:\n{out.getvalue()[-3000:]}") from None
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        torch.set_num_threads(saved[2])
    return out.getvalue()
