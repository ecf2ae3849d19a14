"""Ctrl-C that a run cannot lose.

Python runs a signal handler between bytecodes of the main thread, and the KeyboardInterrupt it
raises surfaces wherever that thread is. When that is a callback run from C (Cython code of
Ray's core, a destructor), the exception is printed as "ignored" and dropped, and the run goes
on as if no Ctrl-C had come: the Ctrl-C test of `pipeline.run` saw that twice in CI (the run
finished, or ran on past the test's timeout, after its SIGINT). So while the dispatch loop runs,
`Interrupts` wraps the SIGINT handler (and a SIGTERM handler the caller installed, e.g. the
CLI's): each signal is recorded, then passed to the handler that was there; the loop calls
`check()` every turn (at most 0.5 s apart), which calls that handler again for a signal whose
exception did not end the loop. Outside the main thread (no signal reaches it) it does nothing.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType


class Interrupts:
    def __init__(self):
        self._previous: dict[int, object] = {}
        self._pending: list[int] = []

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):  # not SIG_DFL / SIG_IGN (a default SIGTERM ends the process anyway)
                self._previous[signum] = handler
                signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)
        self._previous[signum](signum, frame)  # raises (KeyboardInterrupt, SystemExit) as before
        self._pending.remove(signum)           # a handler that returned: nothing left to do

    def check(self) -> None:
        """Re-run the handler of a signal whose exception never reached the loop."""
        while self._pending:
            signum = self._pending.pop(0)
            handler = self._previous.get(signum)
            if handler is not None:
                handler(signum, None)
