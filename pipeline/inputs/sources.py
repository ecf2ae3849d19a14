"""Input sources: what the driver may know about a corpus without reading it, and how an actor reads rows.

A source is an ordered list of fragments (a Parquet file, a Ray block, one in-memory table),
each with a stable key and a row count taken from metadata only. The driver plans shards over
those counts (see `shards.py`); the source object itself is shipped to every actor, which calls
`read(fragment, start, stop)` to pull its own rows straight from storage or the object store.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from ..config import PipelineConfig
from ..errors import InputError, InputNotFoundError, InputTypeError
from ..fs import filesystem
from ..redact import redact
from .parquet_files import Footers, OpenedFile
from .source_checks import check_column_types, check_spans_type, footer, reason

_TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Fragment:
    """One readable unit of the input: a stable `key` (path or content hash) and its row count."""

    key: str
    num_rows: int


class Source:
    """Base class: `fragments` in input order, and `read` of a row range of one fragment."""

    kind = "abstract"
    in_memory = False
    fragments: tuple[Fragment, ...] = ()

    def read(self, index: int, start: int, stop: int, columns: list[str]) -> pa.Table:
        raise NotImplementedError

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.fragments)


class ParquetSource(Source):
    """Parquet files on any pyarrow filesystem; only footers are read when planning. Each file's
    size (from the planner's listing) travels with the source, so an actor opens a file without
    asking the store for it, and keeps the footers it read (`parquet_files.py`)."""

    kind = "parquet"

    def __init__(self, filesystem: pafs.FileSystem, paths: list[str], counts: list[int], sizes: list[int]):
        self.filesystem = filesystem
        self.paths, self.sizes = list(paths), list(sizes)
        self.fragments = tuple(Fragment(f"{p}#{s}", n) for p, n, s in zip(paths, counts, sizes))
        self._footers = Footers()

    schemas: list = ()  # each file's Arrow schema, as planned (the driver's copy only)

    def __getstate__(self):  # actors need no schemas: keep the shipped source small
        return {**self.__dict__, "schemas": (), "_footers": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._footers = Footers()  # each process reads the footers it needs, once per file

    def read(self, index, start, stop, columns):
        try:
            opened = self._footers.get(index, lambda: OpenedFile(self.filesystem, self.paths[index],
                                                                 self.sizes[index]))
            return opened.read(start, stop, columns)
        except (pa.ArrowException, OSError) as e:  # corrupt pages, or the file changed since planned
            raise InputError(f"reading rows {start}..{stop - 1} of the input file "
                             f"{redact(self.paths[index])} failed: {reason(e)}") from None


class TableSource(Source):
    """An in-memory pyarrow Table (from a list, pandas, or an in-memory HF dataset), put in Ray's object store once."""

    kind = "table"
    in_memory = True

    def __init__(self, table: pa.Table, ref=None):
        self.ref = ref
        self.fragments = (Fragment(f"memory:{_table_digest(table)}", table.num_rows),)
        self._table = table if ref is None else None

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.ref is not None:
            state["_table"] = None  # actors get the table from the object store, zero-copy
        return state

    def read(self, index, start, stop, columns):
        if self._table is None:
            self._table = ray.get(self.ref)
        return self._table.slice(start, stop - start).select(columns)


class HFDatasetSource(Source):
    """A Hugging Face `datasets.Dataset` backed by Arrow files on disk (memory-mapped; pickles by path)."""

    kind = "hf_dataset"

    def __init__(self, dataset):
        self.dataset = dataset
        files = ",".join(f["filename"] for f in dataset.cache_files)
        self.fragments = (Fragment(f"hf:{files}:{dataset._fingerprint}", len(dataset)),)

    def read(self, index, start, stop, columns):
        return self.dataset.select_columns(columns).with_format("arrow")[start:stop]


class RayBlocksSource(Source):
    """A Ray Dataset, executed into Arrow blocks that stay in the object store (never the driver's heap)."""

    kind = "ray_dataset"

    def __init__(self, refs: list, counts: list[int]):
        self.refs = list(refs)
        self.fragments = tuple(Fragment(f"ray_block:{i}", n) for i, n in enumerate(counts))

    def read(self, index, start, stop, columns):
        return ray.get(self.refs[index]).slice(start, stop - start).select(columns)


def open_source(data, config: PipelineConfig) -> Source:
    """Turn any supported input into a Source, reading metadata only, and check its columns.

    `data`: Parquet path / folder / glob / list of paths (local or a pyarrow filesystem URI), a
    `datasets.Dataset` or its `save_to_disk` folder, a `ray.data.Dataset`, a `pyarrow.Table`, a
    `pandas.DataFrame`, or a list of strings (read as `config.text_column`).
    Table-like sources need Ray initialized (they are put in the object store).
    """
    source, schema = _open(data, config)
    where = source.kind
    if isinstance(source, ParquetSource):
        more = len(source.paths) - 1
        where = f"Parquet file {redact(source.paths[0])}" + (f" (and {more} more)" if more else "")
    check_schema(schema, config, where=where)
    if isinstance(source, ParquetSource):
        check_column_types(source, config)
    return source


def _open(data, config):
    if isinstance(data, (str, os.PathLike)) or _is_path_list(data):
        return _open_paths(data)
    if isinstance(data, pa.Table):
        return _table_source(data), data.schema
    if type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame":
        table = pa.Table.from_pandas(data, preserve_index=False)
        return _table_source(table), table.schema
    if _is_hf_dataset(data):
        return _open_hf(data)
    if type(data).__module__.startswith("ray.data"):
        return _open_ray_dataset(data)
    if isinstance(data, (list, tuple)):
        table = _strings_table(data, config.text_column)
        return _table_source(table), table.schema
    raise InputTypeError(
        f"cannot read input of type {type(data).__name__}; pass a Parquet path/glob, a "
        "datasets.Dataset (or its save_to_disk folder), a ray.data.Dataset, a pyarrow.Table, "
        "a pandas.DataFrame, or a list of strings")


def check_schema(schema: pa.Schema, config: PipelineConfig, where: str) -> None:
    """Raise InputError (a ValueError) naming the column if the text/pair/id/pass-through columns
    are missing or a text column is not a string."""
    for name in config.input_columns:
        if schema.get_field_index(name) < 0:
            setters = "text_column= / pair_column= / id_column=" if config.pair_column \
                else "text_column= / id_column="
            raise InputError(f"column {name!r} not found in the input {where}; its columns are "
                             f"{schema.names} (set {setters} to one of them)")
    for column in config.text_columns:
        _check_text_type(schema.field(column).type, column, config, where)
    if config.spans_column:
        check_spans_type(schema.field(config.spans_column).type, config.spans_column, where)


def _check_text_type(text_type: pa.DataType, column: str, config: PipelineConfig, where: str) -> None:
    if text_type in _TEXT_TYPES or text_type == pa.null():
        return
    if not config.cast_text:
        raise InputError(f"text column {column!r} of the input {where} has type "
                         f"{text_type}, not a string: point text_column= (--text-column) at the "
                         "text, or pass cast_text=True (--cast) to convert it with a pyarrow cast")
    try:
        pa.array([], type=text_type).cast(pa.large_string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as e:
        raise InputError(f"text column {column!r} of the input {where} has type "
                         f"{text_type}, which pyarrow cannot cast to string ({e}); convert it "
                         "to text before embedding") from None


def peek_schema(data, config: PipelineConfig) -> pa.Schema | None:
    """The schema of an in-memory table, DataFrame or list of strings, read without Ray (None for
    other inputs), so that missing columns are refused before Ray starts."""
    if isinstance(data, (list, tuple)) and not _is_path_list(data):
        return pa.schema([(config.text_column, pa.large_string())])
    if isinstance(data, pa.Table):
        return data.schema
    if type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame":
        return pa.Schema.from_pandas(data, preserve_index=False)
    return None


def text_as_string(table: pa.Table, config: PipelineConfig) -> pa.Table:
    """`table` with its text columns cast to large_string when `config.cast_text` asks for it."""
    if not config.cast_text:
        return table
    for column in config.text_columns:
        index = table.schema.get_field_index(column)
        if table.schema.field(index).type not in _TEXT_TYPES:
            table = table.set_column(index, column, table.column(index).cast(pa.large_string()))
    return table


def _table_source(table: pa.Table) -> TableSource:
    return TableSource(table, ray.put(table) if ray.is_initialized() else None)


def _strings_table(items, column: str) -> pa.Table:
    bad = next((i for i, t in enumerate(items) if t is not None and not isinstance(t, str)), None)
    if bad is not None:
        raise InputTypeError(f"item {bad} of the input list is a {type(items[bad]).__name__}, not a str")
    return pa.table({column: pa.array(list(items), type=pa.large_string())})


def _table_digest(table: pa.Table) -> str:
    # A content hash, so a resume into an output made from different in-memory data is refused.
    # IPC of one combined batch normalises slicing and chunking.
    sink = pa.BufferOutputStream()
    combined = table.combine_chunks()
    with pa.ipc.new_stream(sink, combined.schema) as writer:
        writer.write_table(combined)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def _is_path_list(data) -> bool:
    return (isinstance(data, (list, tuple)) and len(data) > 0
            and all(isinstance(p, os.PathLike) for p in data))


def _is_hf_dataset(data) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "cache_files")


def _open_paths(data):
    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    fs, files = None, []
    for spec in specs:
        spec_fs, found = _expand(os.fspath(spec))
        if isinstance(found, tuple):  # a save_to_disk folder
            return found
        fs = fs or spec_fs
        files.extend(found)
    if not files:
        raise InputNotFoundError(f"no Parquet files match {data!r}")
    paths, sizes = [p for p, _ in files], [n for _, n in files]
    with ThreadPoolExecutor(8) as pool:  # footers only, the sizes known: one GET per file
        metas = list(pool.map(lambda p, n: footer(fs, p, n), paths, sizes))
    schema = metas[0].schema.to_arrow_schema()
    for path, meta in zip(paths[1:], metas[1:]):
        other = meta.schema.to_arrow_schema()
        if other.names != schema.names:
            raise InputError(f"Parquet file {redact(path)} has columns {other.names}, but "
                             f"{redact(paths[0])} has {schema.names}; all input files must share "
                             "one schema")
    source = ParquetSource(fs, paths, [m.num_rows for m in metas], sizes)
    source.schemas = [m.schema.to_arrow_schema() for m in metas]
    return source, schema


def _expand(spec: str):
    """(filesystem, sorted [(Parquet path, size)]) for a file, folder or glob (the sizes from
    the listing: no request per file); or (filesystem, (source, schema)) for an HF folder."""
    fs, path = filesystem(spec)
    if _GLOB_CHARS.intersection(path):
        parts = path.split("/")
        cut = next(i for i, part in enumerate(parts) if _GLOB_CHARS.intersection(part))
        base = "/".join(parts[:cut]) or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return fs, _sized(i for i in infos if i.is_file and fnmatch.fnmatchcase(i.path, path)
                          and not _hidden(i.path[len(base):]))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputNotFoundError(f"input {spec!r} does not exist")
    if info.type == pafs.FileType.File:
        return fs, [(path, info.size)]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))  # one listing serves both
    names = {i.path[len(path):].strip("/") for i in infos}  # a top-level name has no "/"
    if "state.json" in names or "dataset_dict.json" in names:
        return fs, _open_hf_folder(path, names)
    return fs, _sized(i for i in infos if i.is_file and i.base_name.endswith(".parquet")
                      and not _hidden(i.path[len(path):]))


def _sized(infos) -> list[tuple[str, int]]:
    return sorted((i.path, i.size) for i in infos)


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _open_hf_folder(path: str, names: set[str]):
    import datasets
    if "dataset_dict.json" in names:
        splits = sorted(datasets.load_from_disk(path).keys())
        raise InputError(f"{path} is a DatasetDict with splits {splits}; pass one split's folder, "
                         f"e.g. {path}/{splits[0]}")
    return _open_hf(datasets.load_from_disk(path))


def _open_hf(dataset):
    if hasattr(dataset, "keys") and not hasattr(dataset, "features"):
        raise InputError(f"a DatasetDict with splits {list(dataset.keys())}; pass one split, e.g. ds['train']")
    schema = dataset.features.arrow_schema
    if dataset.cache_files:
        return HFDatasetSource(dataset), schema
    return _table_source(dataset.with_format("arrow")[:]), schema


def _open_ray_dataset(ds):
    refs = ds.to_arrow_refs()
    counts = ray.get([_count_rows.options(num_cpus=0).remote(r) for r in refs])
    keep = [(r, n) for r, n in zip(refs, counts) if n > 0]
    schema = ds.schema().base_schema if hasattr(ds.schema(), "base_schema") else ds.schema()
    return RayBlocksSource([r for r, _ in keep], [n for _, n in keep]), schema


@ray.remote
def _count_rows(table) -> int:
    return table.num_rows
