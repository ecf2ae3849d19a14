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
import os
import runpy
import signal
import sys
from dataclasses import dataclass
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


@dataclass
class Ran:
    """What a job's `main()` run here gave: as `subprocess.CompletedProcess` names it."""

    returncode: int
    stdout: str
    stderr: str


def run_job(script: str, *args: str, env: dict | None = None) -> Ran:
    """`python ROOT/jobs/SCRIPT ARGS` as its `main(argv)` in this process: its exit status and
    what it printed. `env` is this process's environment during the call (put back after).

    For tests of what a job answers (exit codes, messages, outputs). A test of what the process
    itself does (a kill, a signal, start-up, `ray job submit`) runs it as a subprocess. The job's
    run shares this process's Ray and warm actors, where a subprocess would start its own (seconds
    of CPU each). The SIGINT/SIGTERM handlers `main` installs are put back."""
    path = ROOT / "jobs" / script
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_env, saved_path = dict(os.environ), list(sys.path)
    out, err = io.StringIO(), io.StringIO()
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    sys.path.insert(0, str(path.parent))  # as `python path` puts the script's folder first
    try:
        module = runpy.run_path(str(path), run_name=f"job_{path.stem}")  # its functions, not __main__
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module["main"](list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        for s, h in handlers.items():
            signal.signal(s, h)
    return Ran(int(code or 0), out.getvalue(), err.getvalue())
