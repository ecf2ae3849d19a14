"""A real-text sample corpus that exists on any machine with Python: the standard library's docstrings.

Used by `make demo` and the benchmarks. Docstrings are read with `ast` from the stdlib source
files (nothing is imported), split into paragraphs and merged into passages of natural, varied
lengths. The result is deterministic for a given Python installation.
"""
from __future__ import annotations

import ast
import functools
import random
import sysconfig
from pathlib import Path

_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__"}


@functools.lru_cache(maxsize=None)
def _source_files(root: Path, skip: frozenset[str]) -> tuple[Path, ...]:
    """Every source file under `root` outside `skip` folders, sorted; walked once per process."""
    return tuple(p for p in sorted(root.rglob("*.py")) if skip.isdisjoint(p.relative_to(root).parts[:-1]))


@functools.lru_cache(maxsize=None)
def _file_paragraphs(path: Path) -> tuple[str, ...]:
    """The docstring paragraphs of one file, parsed once per process (a later call, say a test
    module's fixture after another's, reads none of the files again)."""
    return tuple(p for doc in _docstrings(path) for p in _paragraphs(doc))


def _roots() -> list[tuple[Path, frozenset[str]]]:
    """The stdlib first; then the interpreter's installed packages, for corpora larger than it."""
    paths = sysconfig.get_paths()
    stdlib = (Path(paths["stdlib"]), frozenset(_SKIP_DIRS))
    purelib = (Path(paths["purelib"]), frozenset({"test", "tests", "__pycache__"}))
    return [stdlib] if stdlib[0] == purelib[0] else [stdlib, purelib]


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc:
            out.append(doc)
    return out


def _paragraphs(doc: str) -> list[str]:
    paras = []
    for block in doc.split("\n\n"):
        text = " ".join(line.strip() for line in block.splitlines() if line.strip())
        if len(text) >= 20:
            paras.append(text)
    return paras


def sample_passages(n: int = 3000, seed: int = 0, max_chars: int = 2000) -> list[str]:
    """Return `n` distinct passages of English prose from Python docstrings.

    Paragraphs are merged with their neighbours (a random 1..6 of them, capped at `max_chars`)
    so lengths range from a short sentence to a few hundred tokens, like a retrieval corpus.
    Raises ValueError if this Python has fewer distinct passages than asked for.
    """
    rng = random.Random(seed)
    passages: list[str] = []
    seen: set[str] = set()
    for root, skip in _roots():
        paras = []
        for path in _source_files(root, skip):
            if len(paras) > 4 * (n - len(passages)):  # ~3.5 paragraphs per passage: enough
                break
            paras.extend(p for p in _file_paragraphs(path) if p not in seen and not seen.add(p))
        i = 0
        while i < len(paras):
            k = rng.randint(1, 6)
            passages.append(" ".join(paras[i:i + k])[:max_chars])
            i += k
        if len(passages) >= n:
            break
    if len(passages) < n:
        raise ValueError(f"only {len(passages)} passages available in this Python's docstrings, asked for {n}")
    rng.shuffle(passages)
    return passages[:n]
