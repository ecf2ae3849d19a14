"""pipeline/execution/interrupt.py: a Ctrl-C whose KeyboardInterrupt was dropped is raised again
at the dispatch loop's next check; handlers are put back after the loop."""
import os
import signal
import threading
import time

import pytest

from pipeline.execution.interrupt import Interrupts


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.2)  # the handler runs between these bytecodes


def test_a_dropped_ctrl_c_is_raised_at_the_next_check():
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as interrupts:
        try:
            _deliver(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # dropped, as inside a callback whose exception is printed and ignored
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts.check()  # once: nothing pending now
    assert signal.getsignal(signal.SIGINT) is before


def test_a_handler_that_returns_leaves_nothing_pending_and_sigterm_is_wrapped_when_installed():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with Interrupts() as interrupts:
            _deliver(signal.SIGTERM)
            interrupts.check()  # the caller's handler returned: nothing to re-run
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_it_does_nothing():
    errors = []

    def body():
        try:
            with Interrupts() as interrupts:
                interrupts.check()
        except Exception as e:  # noqa: BLE001 — reported to the test's thread
            errors.append(e)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
