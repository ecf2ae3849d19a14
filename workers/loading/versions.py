"""The library versions this engine is tested against, read from this package's own metadata
(pyproject.toml's `transformers` and `sentence-transformers` ranges), and one warning per
process for each installed version, or folder written by a sentence-transformers version,
outside them.
"""
from __future__ import annotations

import importlib.metadata as metadata
import logging
from functools import lru_cache

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

logger = logging.getLogger(__name__)

PACKAGE = "prefill-embed"
CHECKED = ("transformers", "sentence-transformers")
_warned: set[tuple[str, str]] = set()


@lru_cache(maxsize=1)
def tested_ranges() -> dict[str, str]:
    """{package: specifier} as pyproject.toml declares them (empty if not installed as a package)."""
    try:
        requires = metadata.requires(PACKAGE) or []
    except metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for line in requires:
        req = Requirement(line)
        if req.name in CHECKED and str(req.specifier):
            ranges[req.name] = str(req.specifier)
    return ranges


def outside(package: str, version: str) -> str | None:
    """The tested range of `package` when `version` lies outside it, else None."""
    spec = tested_ranges().get(package)
    if spec is None:
        return None
    try:
        inside = Requirement(f"{package}{spec}").specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return spec
    return None if inside else spec


def warn_untested(package: str, version: str | None, what: str) -> None:
    """Log once per process when `what` (installed, or a folder's writer) is outside the range."""
    spec = outside(package, version) if version else None
    if spec is None or (package, version) in _warned:
        return
    _warned.add((package, version))
    logger.warning("%s %s %s is outside the tested range %s%s (pyproject.toml): the folder layouts "
                   "it reads or writes may differ from what this engine implements", what, package,
                   version, package, spec)


def check_installed() -> None:
    for package in CHECKED:
        try:
            warn_untested(package, metadata.version(package), "installed")
        except metadata.PackageNotFoundError:
            continue
