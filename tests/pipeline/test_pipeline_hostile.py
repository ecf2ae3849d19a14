"""Hostile input through `pipeline.run` and `jobs/embed_corpus.py`: every row is embedded or
reported, and everything that cannot run is refused before any work with an error naming the
file, column or row and the fix.

References: `Engine.embed` of the same texts in this process (float32), the input itself for
ids and error records. One local Ray for the module (conftest `ray_local`); CLI runs that need
actors join it through RAY_ADDRESS.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import pipeline
from pipeline.inputs.samples import sample_passages
from tiny_models import make_tiny_model
from pipeline.output.manifest import read_manifest
from scripts import run_job

ROOT = Path(__file__).resolve().parents[2]
F32 = {"dtype": "float32", "progress": False}
ODD_TEXTS = [
    "a", "é", "🙂", "日", "control\x00char\x07s\x1b[31m", "tab\tand\r\nnewline", "e\u0301\u0301\u0301",
    "नमस्ते दुनिया", "שלום עולם", "مرحبا بالعالم", "日本語のテキストと中文文本", "👩‍👩‍👧‍👦🏳️‍🌈",
    "zero\u200bwidth", "\u200b", "Z̴̡̢͎̈́a̷l̶g̵o̸", "x" * 3000, "ﷺ", "\U0001F600" * 50,
]


@pytest.fixture(scope="module")
def engine():
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(dtype="float32", num_threads=2))


def assert_vectors(got, want):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def cli(*args, env=None):
    """The CLI's answer (exit code, what it printed), its `main` run in this process (tests/scripts.py)."""
    return run_job("embed_corpus.py", *args, env=env)


# -- refused before any work -------------------------------------------------------------------

def test_missing_text_or_id_column_names_the_file_and_its_columns(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc": ["a"], "body": ["some text"]}), path)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"column 'text' not found in the input Parquet file "
                                         r".*corpus.parquet; its columns are \['doc', 'body'\]"):
        pipeline.run(str(path), output=str(out), progress=False)
    with pytest.raises(ValueError, match=r"column 'id' not found.*\['doc', 'body'\].*id_column="):
        pipeline.run(str(path), output=str(out), text_column="body", id_column="id", progress=False)
    assert not out.exists()  # refused while planning: nothing was created


def test_non_string_text_refused_or_cast(ray_local, engine, tmp_path):
    """In memory (no output folder), with repeated ids: `result.errors` reports both kinds."""
    data = pa.table({"text": pa.array([7, 42, None, 1234567, 5], pa.int64()),
                     "doc": ["a", "b", "c", "a", "e"]})
    with pytest.raises(ValueError, match=r"text column 'text' of the input table has type int64, "
                                         r"not a string.*cast_text=True \(--cast\)"):
        pipeline.run(data, **F32)
    result = pipeline.run(data, id_column="doc", cast_text=True, shard_rows=2, **F32)
    assert_vectors(np.delete(result.embeddings, 2, axis=0), engine.embed(["7", "42", "1234567", "5"]))
    assert np.isnan(result.embeddings[2]).all()
    assert list(result.errors) == [
        {"id": "a", "shard": "000000", "row": 0, "reason": "duplicate id"},
        {"id": "c", "shard": "000001", "row": 2, "reason": "text column 'text' is null"},
        {"id": "a", "shard": "000001", "row": 3, "reason": "duplicate id"}]
    assert (result.stats.bad_rows, result.stats.duplicate_ids) == (1, 2)
    nested = pa.table({"text": [[1, 2]]})
    with pytest.raises(ValueError, match=r"list<item: int64>, which pyarrow cannot cast to string"):
        pipeline.run(nested, cast_text=True, **F32)


def test_output_folder_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("the user's")
    (out / "sub" / "data.csv").write_text("the user's")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"output folder .*out' holds 2 file\(s\) the pipeline "
                                             r"did not write.*notes.txt, sub/data.csv.*new or empty folder"):
            pipeline.run(["a text"], output=str(out), overwrite=overwrite, **F32)
    assert sorted(p.name for p in out.rglob("*")) == ["data.csv", "notes.txt", "sub"]  # untouched
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        pipeline.run(["a text"], output=str(tmp_path / "a-file"), **F32)


def test_model_folder_missing_files_named_with_what_was_found(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match=r"empty' has no config.json, no \*.safetensors "
                                                r"weights; it holds \['vocab.txt'\]"):
        pipeline.run(["a"], model=tmp_path / "empty", **F32)
    make_tiny_model(tmp_path / "no-tok", "BertModel")
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / "no-tok" / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"no-tok' has no tokenizer \(tokenizer.json, "
                                                r"vocab.txt.*\); it holds \['config.json', 'model.safetensors'"):
        pipeline.run(["a"], model=tmp_path / "no-tok", **F32)


class _Payload:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_weights_refused_unless_allowed_and_then_weights_only(ray_local, tmp_path):
    from safetensors.torch import load_file
    from workers import Engine, EngineConfig
    from workers.loading.loader import load_weights
    from workers.loading.model_folder import open_model_folder
    from workers.models import model_class
    clean, folder = tmp_path / "clean", tmp_path / "pickled"
    make_tiny_model(clean, "BertModel")
    shutil.copytree(clean, folder)
    reference = load_file(folder / "model.safetensors")
    torch.save(reference, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*refused.*"
                                         r"safetensors.*allow_pickle=True"):
        pipeline.run(["a"], model=folder, **F32)
    texts = ["hello world", "日本語"]
    allowed = pipeline.run(texts, model=folder, allow_pickle=True, **F32)
    assert_vectors(allowed.embeddings, Engine(EngineConfig(model=str(clean), dtype="float32")).embed(texts))
    opened = open_model_folder(str(folder), allow_pickle=True)
    assert opened.weights == (folder / "pytorch_model.bin",)
    model = model_class(opened.architecture)(opened.hf_config)
    load_weights(model, opened.weights)  # every parameter filled, none unexpected
    state = dict(model.named_parameters())
    assert torch.equal(state["embeddings.word_embeddings.weight"], reference["embeddings.word_embeddings.weight"])
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(str(marker))}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        load_weights(model, open_model_folder(str(folder), allow_pickle=True).weights)
    assert not marker.exists()


def test_auto_map_folder_runs_our_model_never_its_code(engine, tmp_path):
    from workers import Engine, EngineConfig
    clean, custom = tmp_path / "clean", tmp_path / "custom"
    make_tiny_model(clean, "BertModel")
    shutil.copytree(clean, custom)
    marker = tmp_path / "remote-code-ran"
    (custom / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps(config))
    texts = ["hello world", "日本語"]
    got = Engine(EngineConfig(model=str(custom), dtype="float32")).embed(texts)
    assert_vectors(got, Engine(EngineConfig(model=str(clean), dtype="float32")).embed(texts))
    assert not marker.exists()
    # Nothing in the engine, pipeline or jobs ever asks transformers to run a folder's code.
    calls = [line for d in ("workers", "pipeline", "jobs") for f in (ROOT / d).rglob("*.py")
             for line in f.read_text().splitlines() if "trust_remote_code=True" in line.replace(" ", "")]
    assert calls == []


# -- bad rows and duplicate ids: embedded or reported --------------------------------------------

def test_null_empty_whitespace_rows_recorded_with_reasons(ray_local, engine, tmp_path):
    texts = sample_passages(30, seed=8, max_chars=200)
    bad = {2: None, 5: "", 9: " ", 10: "\t\n  ", 17: "\u3000\u00a0", 29: None}
    for row, text in bad.items():
        texts[row] = text
    ids = [f"k{i}" for i in range(30)]
    data = pa.table({"key": ids, "text": texts})
    out = tmp_path / "out"
    result = pipeline.run(data, output=str(out), id_column="key", shard_rows=4, **F32)
    good = [i for i in range(30) if i not in bad]
    assert (result.stats.rows, result.stats.bad_rows, result.stats.bad_rows_total) == (24, 6, 6)
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == [ids[i] for i in good]
    assert_vectors(pipeline.to_numpy(table), engine.embed([texts[i] for i in good]))
    kind = {None: "null", "": "empty"}
    assert pq.read_table(out / "_errors.parquet").to_pylist() == [
        {"id": ids[r], "shard": f"{r // 4:06d}", "row": r,
         "reason": f"text column 'text' is {kind.get(t, 'whitespace only')}"} for r, t in bad.items()]


def test_duplicate_ids_reported_and_all_rows_embedded(ray_local, engine, tmp_path):
    texts = sample_passages(20, seed=9, max_chars=200)
    ids = [f"d{i}" for i in range(20)]
    ids[1] = ids[3] = "same-shard"      # rows 1 and 3: shard 0
    ids[6], ids[18] = "d0", "d0"       # rows 0, 6, 18: three shards
    data = pa.table({"doc": ids, "text": texts})
    out = tmp_path / "out"
    result = pipeline.run(data, output=str(out), id_column="doc", shard_rows=5, **F32)
    assert (result.stats.rows, result.stats.duplicate_ids) == (20, 5)
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == ids  # never collapsed
    assert_vectors(pipeline.to_numpy(table), engine.embed(texts))
    assert pq.read_table(out / "_errors.parquet").to_pylist() == [
        {"id": ids[r], "shard": f"{r // 5:06d}", "row": r, "reason": "duplicate id"} for r in (0, 1, 3, 6, 18)]


def test_overlong_text_in_error_mode_names_its_row_and_id_without_retries(ray_local):
    texts = sample_passages(12, seed=4, max_chars=60)
    texts[3] = None                                      # a recorded bad row before it
    texts[8] = "a long text about tokens " * 40          # over max_length=32
    data = pa.table({"doc": [f"doc-{i}" for i in range(12)], "text": texts})
    with pytest.raises(pipeline.ShardFailedError) as info:
        pipeline.run(data, id_column="doc", shard_rows=5, truncation="error", max_length=32,
                     max_retries=5, **F32)
    message = str(info.value)
    assert "row 8 (id 'doc-8') cannot be embedded with truncation='error'" in message
    assert "max_length=32" in message and "failed" not in message  # refused at once, not retried


def test_odd_but_valid_texts_embed_like_the_engine(ray_local, engine):
    result = pipeline.run(ODD_TEXTS, shard_rows=7, **F32)
    assert result.errors == () and result.stats.rows == len(ODD_TEXTS)
    assert_vectors(result.embeddings, engine.embed(ODD_TEXTS))


# -- output writes that fail ---------------------------------------------------------------------

def test_part_write_over_the_file_size_limit_publishes_nothing(tmp_path):
    """A real EFBIG from RLIMIT_FSIZE (root ignores permissions) in a child process."""
    script = textwrap.dedent(f"""
        import json, os, resource, signal
        import numpy as np, pyarrow as pa
        from pipeline.errors import OutputWriteError
        from pipeline.output.output_folder import OutputFolder
        from pipeline.output.writer import part_table
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        folder = OutputFolder.open({str(tmp_path)!r})
        small = part_table(pa.array([0]), np.ones((1, 8), np.float32), None, "float32", {{}})
        kept = folder.publish_part("000000", small, "parquet")["path"]
        big = part_table(pa.array(range(64)), np.random.rand(64, 384), None, "float32", {{}})
        try:
            folder.publish_part("000001", big, "parquet")
        except OutputWriteError as e:
            print(json.dumps({{"kept": kept, "error": str(e), "errno": e.__cause__.errno}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["errno"] == 27  # EFBIG
    assert report["error"].startswith(f"shard 000001: writing {tmp_path}/part-000001-")
    assert "nothing was published" in report["error"] and "rerun to resume" in report["error"]
    assert os.listdir(tmp_path) == [report["kept"]]  # no temporary, no partial part


@pytest.fixture
def small_disk(tmp_path):
    """A real 96 KiB tmpfs (needs root); unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.slow
def test_disk_full_fails_the_shard_cleanly_and_a_rerun_resumes(ray_local, engine, small_disk):
    texts = sample_passages(60, seed=4, max_chars=200)
    out = small_disk / "out"
    with pytest.raises((pipeline.ShardFailedError, OSError)) as info:
        pipeline.run(texts, output=str(out), shard_rows=6, max_retries=1, **F32)
    message = str(info.value)
    assert "No space left on device" in message and "rerun" in message
    assert "shard 0" in message or "_manifest.json" in message
    manifest = read_manifest(out)
    named = {r["path"] for r in manifest["shards"].values()}
    assert not list(out.glob(".part-*.tmp"))  # every failed write removed its temporary
    assert named <= {p.name for p in out.glob("part-*")} and len(named) < 10
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    resumed = pipeline.run(texts, output=str(out), shard_rows=6, **F32)
    assert resumed.stats.resumed_shards == len(named) and resumed.stats.rows_total == 60
    table = pipeline.read_embeddings(out)
    assert table.column("id").to_pylist() == list(range(60))
    assert_vectors(pipeline.to_numpy(table), engine.embed(texts))


# -- the CLI: exit codes and messages --------------------------------------------------------------

def test_cli_refuses_bad_input_with_exit_code_2(tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc": ["a", "b"], "body": ["x", "y"], "n": [1, 2]}), corpus)
    missing = cli("--input", str(corpus), "--output", str(tmp_path / "o1"))
    assert missing.returncode == 2 and "column 'text' not found" in missing.stderr
    assert "(set --text-column / --id-column to one of them)" in missing.stderr  # the CLI's words
    assert "text_column=" not in missing.stderr
    assert "['doc', 'body', 'n']" in missing.stderr
    (tmp_path / "model").mkdir()
    model = cli("--input", str(corpus), "--output", str(tmp_path / "o4"), "--text-column", "body",
                "--model", str(tmp_path / "model"))
    assert model.returncode == 2 and "has no config.json" in model.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o4").exists()
    folder = tmp_path / "corpus"  # issue 24: one file of a folder is not Parquet: named
    folder.mkdir()
    pq.write_table(pa.table({"text": ["x"]}), folder / "a.parquet")
    (folder / "b.parquet").write_text("not parquet")
    bad = cli("--input", str(folder), "--output", str(tmp_path / "o5"))
    assert bad.returncode == 2 and f"input file {folder / 'b.parquet'} as Parquet" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_exit_codes_for_reported_rows_and_bad_row_errors(ray_local, tmp_path):
    """Exit 4 (rows reported) and 2 (a bad row under --on-bad-row error); exit 3 (another run in
    the output) is tests/jobs/test_pipeline_jobs.py::test_driver_sigkilled_mid_run_then_resumed."""
    import ray
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    texts = sample_passages(12, seed=2, max_chars=100)
    texts[4] = "   "
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc": [f"d{i}" for i in range(12)], "text": texts}), corpus)
    args = ["--input", str(corpus), "--id-column", "doc", "--shard-rows", "4", "--no-progress",
            "--dtype", "float32"]
    out = tmp_path / "out"
    reported = cli(*args, "--output", str(out), "--summary-json", str(tmp_path / "s.json"), env=env)
    assert reported.returncode == 4, reported.stderr[-2000:]
    assert "1 row(s) not processed" in reported.stderr and "_errors.parquet" in reported.stderr
    assert json.loads((tmp_path / "s.json").read_text())["bad_rows_total"] == 1
    strict = cli(*args, "--output", str(tmp_path / "strict"), "--on-bad-row", "error", env=env)
    assert strict.returncode == 2, strict.stderr[-2000:]
    assert ("shard 000001 (rows 4..7): 1 row(s) cannot be embedded, first at row 4 (id 'd4'): "
            "text column 'text' is whitespace only") in strict.stderr
