"""Locations: a local path or a pyarrow filesystem URI (`s3://bucket/x`), and the filesystem
that serves it. Every module that reads or writes by location goes through here."""
from __future__ import annotations

import os

import pyarrow.dataset as ds
import pyarrow.fs as pafs


def is_uri(location) -> bool:
    """Whether `location` is a filesystem URI (`s3://bucket/x`, `file:///x`), not a local path."""
    return "://" in os.fspath(location)


def absolute(location) -> str:
    """`location` as a string that means the same from any working directory (a URI as given)."""
    location = os.fspath(location)
    return location if is_uri(location) else os.path.abspath(location)


def filesystem(location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a pyarrow filesystem URI such as s3://bucket/run."""
    location = os.fspath(location)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def _parquet_format() -> ds.ParquetFileFormat:
    try:  # read Parquet logical types (uuid, json) as Arrow extension types, as pq.ParquetFile does
        options = ds.ParquetFragmentScanOptions(arrow_extensions_enabled=True)
    except TypeError:  # a pyarrow without extension types for them (pq.ParquetFile has none either)
        options = ds.ParquetFragmentScanOptions()
    return ds.ParquetFileFormat(default_fragment_scan_options=options)


_PARQUET = _parquet_format()


def parquet_fragment(fs: pafs.FileSystem, path: str, size: int | None) -> ds.ParquetFileFragment:
    """The Parquet file `path` of `size` bytes (its listing's or a manifest record's) as a pyarrow
    dataset fragment. With the size known an object store is not asked for it (no HEAD request):
    the footer costs one ranged GET of the object's end (`ensure_complete_metadata`; a fragment
    keeps it, and `subset(row_group_ids=...)` shares it), reading columns the GET(s) of their
    chunks (pre-buffered: adjacent chunks coalesce into one ranged GET)."""
    return _PARQUET.make_fragment(path, filesystem=fs, file_size=None if size is None else int(size))
