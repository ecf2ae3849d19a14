"""Locations: a local path or a pyarrow filesystem URI (`s3://bucket/x`), and the filesystem
that serves it. Every module that reads or writes by location goes through here."""
from __future__ import annotations

import os

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
