"""Every input kind planned from metadata and read back shard by shard (no Ray, no engine).

The reference is the data itself: the concatenated shards must equal the input rows, in order.
Ray Datasets need a cluster and are covered in test_pipeline_run.py.
"""
from __future__ import annotations

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import PipelineConfig
from pipeline.errors import InputError, exit_code
from pipeline.inputs.shards import plan_shards, read_shard
from pipeline.inputs.sources import open_source

N = 53
TEXTS = [f"passage number {i} " + "word " * (i % 7) for i in range(N)]
IDS = [f"doc-{i}" for i in range(N)]
CFG = PipelineConfig(id_column="doc_id")


def _table():
    return pa.table({"doc_id": IDS, "text": TEXTS, "n": list(range(N))})


def _parquet_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    # Three files of uneven sizes and small row groups, plus files the reader must ignore.
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    table = _table()
    pq.write_table(table.slice(0, 20), folder / "a.parquet", row_group_size=6)
    pq.write_table(table.slice(20, 3), folder / "b.parquet", row_group_size=2)
    pq.write_table(table.slice(23), folder / "sub" / "c.parquet", row_group_size=11)
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.parquet").write_text("not parquet")
    return folder


def _hf_disk(tmp_path):
    import datasets
    path = tmp_path / "hf"
    datasets.Dataset.from_dict(_table().to_pydict()).save_to_disk(str(path))
    return path


def _inputs(kind, tmp_path):
    import datasets
    import pandas as pd
    if kind == "parquet_file":
        path = tmp_path / "one.parquet"
        pq.write_table(_table(), path, row_group_size=10)
        return str(path)
    if kind == "parquet_dir":
        return str(_parquet_dir(tmp_path))
    if kind == "parquet_glob":
        return str(_parquet_dir(tmp_path)) + "/**.parquet"
    if kind == "path_list":
        folder = _parquet_dir(tmp_path)
        return [folder / "a.parquet", folder / "b.parquet", folder / "sub" / "c.parquet"]
    if kind == "table":
        return _table()
    if kind == "pandas":
        return pd.DataFrame(_table().to_pydict())
    if kind == "hf_memory":
        return datasets.Dataset.from_dict(_table().to_pydict())
    if kind == "hf_disk_object":
        return datasets.load_from_disk(str(_hf_disk(tmp_path)))
    if kind == "hf_disk_folder":
        return str(_hf_disk(tmp_path))
    raise AssertionError(kind)


KINDS = ["parquet_file", "parquet_dir", "parquet_glob", "path_list", "table", "pandas",
         "hf_memory", "hf_disk_object", "hf_disk_folder"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shard_rows", [7, 1000])
def test_shards_read_back_the_input_exactly(kind, shard_rows, tmp_path):
    source = open_source(_inputs(kind, tmp_path), CFG)
    assert source.num_rows == N
    shards = plan_shards(source.fragments, shard_rows)
    tables = [read_shard(source, s, CFG.input_columns) for s in shards]
    assert all(t.column_names == ["text", "doc_id"] for t in tables)
    got = pa.concat_tables(tables)
    assert got.column("text").to_pylist() == TEXTS
    assert got.column("doc_id").to_pylist() == IDS


def test_list_of_strings_is_the_text_column():
    source = open_source(["a", "", None, "d"], PipelineConfig())
    table = read_shard(source, plan_shards(source.fragments, 10)[0], ["text"])
    assert table.column("text").to_pylist() == ["a", "", None, "d"]


def test_planning_parquet_reads_no_rows(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": ["x" * 500] * 20_000}), path)  # ~10 MB of text
    before = pa.total_allocated_bytes()
    source = open_source(str(path), PipelineConfig())
    assert source.num_rows == 20_000
    assert pa.total_allocated_bytes() - before < 1_000_000


def test_fragment_keys_are_stable_and_content_sensitive(tmp_path):
    a = open_source(_table(), CFG).fragments
    assert a == open_source(_table(), CFG).fragments
    changed = _table().set_column(1, "text", pa.array(TEXTS[:-1] + ["other"]))
    assert open_source(changed, CFG).fragments != a


@pytest.mark.parametrize("data, config, error, needle", [
    (_table(), PipelineConfig(text_column="body"), ValueError, "'body' not found"),
    (_table(), PipelineConfig(id_column="missing"), ValueError, "'missing' not found"),
    (_table(), PipelineConfig(text_column="n"), ValueError, "not a string"),
    (["ok", 3], PipelineConfig(), TypeError, "item 1"),
    ({"text": ["a"]}, PipelineConfig(), TypeError, "cannot read input of type dict"),
    ("/nonexistent/corpus.parquet", PipelineConfig(), FileNotFoundError, "does not exist"),
])
def test_bad_inputs_raise_actionable_errors(data, config, error, needle):
    with pytest.raises(error) as info:
        open_source(data, config)
    assert needle in str(info.value)


def test_dataset_dict_folder_names_its_splits(tmp_path):
    import datasets
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="splits \\['train'\\]"):
        open_source(str(tmp_path / "dd"), PipelineConfig())


def test_files_with_different_columns_refused(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"body": ["b"]}), tmp_path / "2.parquet")
    with pytest.raises(ValueError, match="share one schema"):
        open_source(str(tmp_path), PipelineConfig())


def _corrupt_inputs(tmp_path: pathlib.Path) -> dict:
    """Issue 24: a truncated file, a text file named .parquet, a folder with one bad file."""
    good = tmp_path / "good.parquet"
    pq.write_table(_table(), good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-20])
    text = tmp_path / "notes.parquet"
    text.write_text("id,text\n1,hello\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for k in range(3):
        pq.write_table(_table(), folder / f"part-{k}.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1 not really")
    return {"truncated": (truncated, truncated), "text": (text, text),
            "folder": (folder, folder / "part-1.parquet")}


@pytest.mark.parametrize("case", ["truncated", "text", "folder"])
def test_unreadable_parquet_names_the_file(tmp_path, case):
    given, bad = _corrupt_inputs(tmp_path)[case]
    with pytest.raises(InputError) as info:
        open_source(str(given), PipelineConfig())
    message = str(info.value)
    assert f"input file {bad} as Parquet" in message and "remove or replace it" in message
    assert exit_code(info.value) == 2


def test_column_type_differing_between_files_names_both(tmp_path):
    pq.write_table(pa.table({"text": ["a"], "doc": ["x"]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"text": pa.array(["b"], pa.large_string()), "doc": [7]}),
                   tmp_path / "2.parquet")
    open_source(str(tmp_path), PipelineConfig())  # string and large_string are one text type
    with pytest.raises(InputError, match=r"column 'doc' is int64 in Parquet file .*2.parquet but "
                                         r"string in .*1.parquet"):
        open_source(str(tmp_path), PipelineConfig(id_column="doc"))


def test_a_file_broken_after_planning_is_named_by_the_reader(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(_table(), path)
    source = open_source(str(path), PipelineConfig())
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match=f"rows 0..1 of the input file {path} failed"):
        source.read(0, 0, 2, ["text"])


def test_a_text_passed_alone_is_answered_as_such(tmp_path, monkeypatch):
    """Issue 24: pipeline.run("a passage") asked for output= (the str was taken as a path)."""
    import pipeline
    from pipeline.errors import InputNotFoundError
    with pytest.raises(InputNotFoundError) as info:
        pipeline.run("a passage", progress=False)  # refused before any model or Ray starts
    message = str(info.value)
    assert "input 'a passage' does not exist" in message and "output=" not in message
    assert "pass a list of strings, e.g. pipeline.run(['a passage'])" in message
    with pytest.raises(InputNotFoundError, match=r"'corpus/missing.parquet' does not exist$"):
        pipeline.run("corpus/missing.parquet", progress=False)
    monkeypatch.chdir(tmp_path)
    pq.write_table(_table(), tmp_path / "c.parquet")
    with pytest.raises(InputError, match="output= is required for file inputs"):
        pipeline.run("c.parquet", progress=False)  # an existing file: the old answer stands
