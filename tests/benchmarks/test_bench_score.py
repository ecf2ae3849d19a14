"""benchmarks/bench_score.py runs end to end and prints its table (a smoke test; no timings asserted)."""
import pytest

from scripts import run_script


@pytest.mark.slow
def test_bench_score_prints_the_table():
    out = run_script("benchmarks/bench_score.py", "--pairs", "6", "--bf16-pairs", "2", "--rounds", "1",
                     "--max-length", "48", "--threads", "1")  # in this process: tests/scripts.py
    print(out)
    assert "| system | pairs | pairs/s | tokens/s | vs ce-bf16 | vs ce-fp32 | max abs diff vs ce-fp32 |" in out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| system")}
    assert set(rows) == {"engine-fp32", "engine-bf16", "ce-fp32", "ce-bf16"}
    assert rows["engine-bf16"][2].strip() == "2" and rows["engine-fp32"][2].strip() == "6"
    assert float(rows["engine-fp32"][7]) <= 1e-5   # the same scores as CrossEncoder fp32
    assert float(rows["engine-bf16"][7]) <= 2e-2
    assert "vs ce-bf16:" in out
