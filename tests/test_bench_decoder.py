"""The decoder benchmark script runs end to end and prints its table (a smoke test; no timings)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_decoder_prints_the_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "bench_decoder.py"), "--passages", "8", "--layers", "1",
         "--max-length", "64", "--rounds", "1"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| system | tokens/s | vs hf-padded |" in out
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert rows >= {"engine-bf16", "hf-padded-bf16"}
    cosine = float(out.split("min cosine engine vs transformers:")[1].split()[0])
    assert cosine >= 0.999, out
