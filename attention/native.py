"""C++ kernels built from source on first use and called through ctypes (no torch headers, so a
build takes a second or two): the CPU attention kernel (cpu_varlen.cpp) and int8's row passes
(workers/quant/int8_rows.cpp).

`build(source)` runs `g++ -O3 -march=native -fopenmp -shared` (`CXX` picks another compiler) into
`~/.cache/prefill-embed/kernels/` (`PREFILL_EMBED_KERNEL_CACHE` moves it; the temp folder when
that cannot be made), keyed by the source, the compiler, torch's version and this CPU's flags,
so a home shared by different CPUs builds once per kind of CPU. It returns (library, None) or
(None, the reason): the caller decides what runs without it. Libraries are loaded after torch,
so their OpenMP calls bind to torch's libgomp (one thread team, see pipeline/execution/actor.py).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


def cache_dir() -> Path:
    try:
        return Path(os.environ.get("PREFILL_EMBED_KERNEL_CACHE")
                    or "~/.cache/prefill-embed/kernels").expanduser()
    except RuntimeError:  # no home directory known
        return Path(tempfile.gettempdir()) / "prefill-embed-kernels"


def cpu_flags() -> str:
    """The `flags` line of /proc/cpuinfo (the processor name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def build(source: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """The library compiled from `source`: (library, None), or (None, why not). Once per process."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        return None, "no C++ compiler on PATH (install g++ or set CXX)"
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C++ compiler {cxx} does not run: {e}"
    key = hashlib.sha256("\0".join([source.read_text(), cxx, *version, *FLAGS, cpu_flags(),
                                    torch.__version__]).encode()).hexdigest()[:16]
    name = f"{source.stem}-{key}.so"
    path = cache_dir() / name
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home (some cluster workers): the temp folder instead
            path = Path(tempfile.gettempdir()) / "prefill-embed-kernels" / name
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Build beside the target, then rename: concurrent builders (actors) never see half a file.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
            os.close(fd)
            proc = subprocess.run([cxx, *FLAGS, "-o", tmp, str(source)], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode:
                os.unlink(tmp)
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                return None, f"building {source.name} with {cxx} failed: " + " | ".join(tail)
            os.replace(tmp, path)
            logger.info("built %s", path)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"building {source.name} failed: {e}"
    try:
        return ctypes.CDLL(str(path)), None
    except OSError as e:
        return None, f"loading {path} failed: {e}"
