"""The engine benchmark script runs end to end and prints its table (a smoke test; no timings asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_engine_prints_the_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "bench.py"), "engine", "--passages", "40",
         "--systems", "engine-fp32,st-fp32"],
        capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| system | tokens/s | vs st-fp32 |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"engine-fp32", "st-fp32"}
    cosine = float(rows["engine-fp32"].split("|")[5])
    assert cosine >= 0.99999  # the same vectors as sentence-transformers
