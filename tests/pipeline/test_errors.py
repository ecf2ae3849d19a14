"""Typed errors and the one exit-code table (pipeline/errors.py), and each exit code of
jobs/embed_corpus.py reached by a real run. Codes 4, and 2 for a bad row under --on-bad-row
error, need a full embedding run: tests/pipeline/test_pipeline_hostile.py::
test_cli_exit_codes_for_reported_rows_and_bad_row_errors; code 3 after a real run:
tests/jobs/test_pipeline_jobs.py::test_driver_sigkilled_mid_run_then_resumed."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import errors
from pipeline.errors import EXIT_CODES, ExitCode, exit_code
from scripts import run_job

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs"))
import embed_corpus  # noqa: E402  (jobs/ is not a package)

# Every class the pipeline raises, with the code it must give and the builtin it must remain.
EXPECTED = [
    (errors.InputError, ExitCode.USAGE, ValueError),
    (errors.InputNotFoundError, ExitCode.USAGE, FileNotFoundError),
    (errors.InputTypeError, ExitCode.USAGE, TypeError),
    (errors.OutputFolderError, ExitCode.USAGE, ValueError),
    (errors.ClusterUnreachableError, ExitCode.USAGE, ConnectionError),
    (errors.BadRowsError, ExitCode.USAGE, ValueError),
    (errors.FingerprintMismatch, ExitCode.MISMATCH, ValueError),
    (errors.RunFailedError, ExitCode.FAILED, RuntimeError),
    (errors.ShardFailedError, ExitCode.FAILED, RuntimeError),
    (errors.WorkersLostError, ExitCode.FAILED, RuntimeError),
    (errors.WorkerStartTimeout, ExitCode.FAILED, TimeoutError),
    (errors.OutputWriteError, ExitCode.FAILED, OSError),
]


@pytest.mark.parametrize("cls, code, builtin", EXPECTED, ids=[c.__name__ for c, _, _ in EXPECTED])
def test_each_error_type_has_its_exit_code_and_stays_a_builtin(cls, code, builtin):
    error = cls("message")
    assert exit_code(error) == code
    assert isinstance(error, builtin) and isinstance(error, errors.PipelineError)
    assert str(error) == "message"


def test_every_pipeline_error_class_is_covered_and_every_failure_code_is_in_the_table():
    defined = {c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.PipelineError) and c is not errors.PipelineError}
    assert defined == {c for c, _, _ in EXPECTED}
    assert set(EXIT_CODES.values()) == {ExitCode.FAILED, ExitCode.USAGE, ExitCode.MISMATCH,
                                        ExitCode.INTERRUPTED}


def test_an_interrupted_run_exits_130_and_is_no_exception():
    """A KeyboardInterrupt: `except Exception` around pipeline.run does not swallow Ctrl-C."""
    error = errors.RunInterrupted("interrupted: 2 of 9 shards committed in out")
    assert exit_code(error) == ExitCode.INTERRUPTED == 130
    assert isinstance(error, KeyboardInterrupt) and not isinstance(error, Exception)


def test_a_bad_row_is_a_shard_failure_that_exits_2_not_1():
    error = errors.BadRowsError("shard 000001 (rows 4..7): 1 row(s) cannot be embedded")
    assert isinstance(error, errors.ShardFailedError)  # `except ShardFailedError` still catches it
    assert exit_code(error) == ExitCode.USAGE


def test_builtins_from_outside_the_pipeline_and_unknown_errors():
    from workers.inputs.input_processor import TextTooLongError
    assert exit_code(TextTooLongError(3, 512)) == ExitCode.USAGE  # the engine's, a ValueError
    assert exit_code(FileNotFoundError("model folder")) == ExitCode.USAGE
    assert exit_code(PermissionError("output")) == ExitCode.FAILED  # an OSError after work began
    assert exit_code(KeyError("a bug")) is None  # not named: the CLI re-raises it with its traceback


def test_skip_bad_rows_is_the_alias_of_record_and_refused_with_error(capsys):
    base = ["--input", "in.parquet", "--output", "out"]
    assert embed_corpus.parse_args(base).on_bad_row == "record"
    assert embed_corpus.parse_args([*base, "--skip-bad-rows"]).on_bad_row == "record"
    assert embed_corpus.parse_args([*base, "--on-bad-row", "error"]).on_bad_row == "error"
    with pytest.raises(SystemExit) as info:
        embed_corpus.parse_args([*base, "--skip-bad-rows", "--on-bad-row", "error"])
    assert info.value.code == ExitCode.USAGE
    assert "contradicts --on-bad-row error" in capsys.readouterr().err


# -- real CLI runs ---------------------------------------------------------------------------------

def cli(*args, env=None):
    """The CLI's answer (exit code, what it printed), its `main` run in this process (tests/scripts.py)."""
    return run_job("embed_corpus.py", "--no-progress", *args, env=env)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc": ["a", "b", "c"], "text": ["one", "two", "three"]}), path)
    return path


def test_cli_exit_2_before_ray_for_a_bad_option_and_a_foreign_output(corpus, tmp_path):
    bad = cli("--input", str(corpus), "--output", str(tmp_path / "o"), "--shard-rows", "0")
    assert bad.returncode == 2 and "--shard-rows 0 must be a positive integer" in bad.stderr
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.docx").write_text("x")
    foreign = cli("--input", str(corpus), "--output", str(user))
    assert foreign.returncode == 2 and "did not write" in foreign.stderr and "Traceback" not in foreign.stderr


def test_cli_exit_3_and_1_on_a_running_cluster(ray_local, corpus, tmp_path):
    """3: the output's manifest records another input (refused before any actor starts);
    1: the engine actors cannot start (the model folder exists on no node of the cluster)."""
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    out = tmp_path / "out"
    out.mkdir()
    (out / "_manifest.json").write_text(json.dumps({
        "version": 1, "fingerprint": {}, "complete": False, "shards": {},
        "plan": {"source": "parquet", "num_rows": 999, "num_fragments": 1, "input_digest": "x",
                 "shard_rows": 10, "num_shards": 100}}))
    other = cli("--input", str(corpus), "--output", str(out), env=env)
    assert other.returncode == 3, other.stderr[-2000:]
    assert "input num_rows: 999 in the output, 3 in this run" in other.stderr
    failed = cli("--input", str(corpus), "--output", str(tmp_path / "o2"), "--model",
                 str(tmp_path / "no-such-model"), env=env)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "an engine actor failed to start" in failed.stderr and "rerun the same command" in failed.stderr
