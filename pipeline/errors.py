"""Typed errors of the pipeline, and the one table that maps them to the CLI's exit codes.

Every class also subclasses the builtin it replaces (ValueError, FileNotFoundError, TypeError,
RuntimeError, OSError, TimeoutError), so `except ValueError` written against older versions
keeps working. `exit_code(error)` walks the error's MRO and returns the first entry of
`EXIT_CODES`: the most specific class wins, so a bad row (an InputError that is also a
ShardFailedError) exits 2, not 1.
"""
from __future__ import annotations

from enum import IntEnum


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


# -- 2: the input or the arguments; fix them and run again --------------------------------------

class InputError(PipelineError, ValueError):
    """Bad arguments or input found before any work: an unknown option, a missing column, a
    non-string text column, a file input without an output folder."""


class InputNotFoundError(InputError, FileNotFoundError):
    """The input path, glob or output folder names nothing that exists."""


class InputTypeError(InputError, TypeError):
    """An input of a type the pipeline cannot read (or a list holding non-strings)."""


class OutputFolderError(InputError):
    """The output is a file, or a folder holding files the pipeline did not write."""


class ClusterUnreachableError(InputError, ConnectionError):
    """The Ray address (address=, RAY_ADDRESS, or a cluster file left by a dead cluster)
    answers nothing; the message names the address, where it came from and the fix."""


# -- 3: the output belongs to another run ----------------------------------------------------------

class FingerprintMismatch(PipelineError, ValueError):
    """The output folder was written with a different model / settings / input than this run
    (or by a pipeline whose manifest version this one cannot read)."""


# -- 1: the run failed; committed shards are kept, rerun to resume ----------------------------

class RunFailedError(PipelineError, RuntimeError):
    """The run stopped after work began; committed shards are kept and a rerun resumes."""


class ShardFailedError(RunFailedError):
    """A shard failed more times than allowed (its last error is named), or on rows that
    cannot be embedded (then it is also a `BadRowsError`)."""


class WorkersLostError(RunFailedError):
    """Every engine actor died, failed to start, or the actors disagree on the fingerprint; or
    every worker was given up because Ray could not place its restart in time (a lost node)."""


class WorkerStartTimeout(RunFailedError, TimeoutError):
    """The engine actors did not start in time: the cluster lacks the resources they ask for."""


class OutputWriteError(RunFailedError, OSError):
    """Writing an output file failed (disk full, permissions); nothing of it was published."""


# -- 2 again: bad data under on_bad_row="error" ----------------------------------------------------

class BadRowsError(InputError, ShardFailedError):
    """A shard holds rows that cannot be embedded (null/blank text with on_bad_row="error", or a
    text over max_length with truncation="error"). Raised in the actor, re-raised by the driver
    as is: it names the shard, row, id and fix. Retrying cannot help, so it never is."""


# -- 130: interrupted (Ctrl-C, SIGTERM); committed shards are kept -----------------------------------

class RunInterrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C in `pipeline.run`, SIGINT / SIGTERM in the CLI). A
    KeyboardInterrupt, so `except Exception` does not swallow it; its one-line message says how
    many shards are committed and that a rerun resumes. Raised without Ray's frames."""


class ExitCode(IntEnum):
    """Exit codes of jobs/embed_corpus.py (its docstring and the README give the meanings)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    MISMATCH = 3
    REPORTED = 4
    INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C (SIGTERM exits 143)


# The one table. Builtins at the end catch what code outside pipeline/ raises before any work
# (workers.EngineConfig's ValueError, the model folder's FileNotFoundError, TextTooLongError);
# an error of a type not listed here is a bug and is re-raised with its traceback.
EXIT_CODES: dict[type[BaseException], ExitCode] = {
    BadRowsError: ExitCode.USAGE,
    KeyboardInterrupt: ExitCode.INTERRUPTED,
    FingerprintMismatch: ExitCode.MISMATCH,
    InputError: ExitCode.USAGE,
    RunFailedError: ExitCode.FAILED,
    ValueError: ExitCode.USAGE,
    TypeError: ExitCode.USAGE,
    FileNotFoundError: ExitCode.USAGE,
    OSError: ExitCode.FAILED,
    RuntimeError: ExitCode.FAILED,
}


def exit_code(error: BaseException) -> ExitCode | None:
    """The exit code of the most specific class of `error` in EXIT_CODES; None if unlisted."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return None
