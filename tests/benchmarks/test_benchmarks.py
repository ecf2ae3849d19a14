"""The benchmark scripts run end to end and print their tables (smoke tests; no timings asserted),
and the shared helpers count what they claim to."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, Qwen2Config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the tests import the helper module the scripts use

import benchlib  # noqa: E402
from scripts import run_script  # noqa: E402


def _run(script: str, *args: str) -> str:
    """The script run whole in this process (tests/scripts.py: no second import of torch and
    the peers per script)."""
    return run_script(f"benchmarks/{script}", *args)


def _run_subprocess(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, check=True).stdout


def test_flops_per_token_counts_linears_and_attention():
    cfg = BertConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    # Per layer: qkv 64x192, out 64x64, ffn 64x256 and 256x64 -> 2 * 49152 FLOPs per token.
    linear = 2 * 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)
    # Two sequences of 10 and 30 tokens: mean context (100 + 900) / 40 = 25.
    assert benchlib.flops_per_token(cfg, np.array([10, 30])) == linear + 4 * 2 * 64 * 25


def test_decoder_shapes_use_kv_heads_and_gated_mlp():
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    assert benchlib.linear_shapes(cfg, 8) == [(8, 64, 64 + 2 * 32), (8, 64, 64), (8, 64, 256), (8, 128, 64)]


def test_cosines_and_ceiling():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(benchlib.cosines(a, np.array([[2.0, 0.0], [-1.0, -1.0]])), [1.0, -1.0])
    assert benchlib.matmul_ceiling([(32, 16, 8)], torch.float32, reps=2) > 0
    assert "cores" in benchlib.machine()


@pytest.mark.slow
def test_bench_engine_prints_the_table():
    out = _run("bench_engine.py", "engine", "--passages", "40", "--systems", "engine-fp32,st-fp32")
    assert "| system | tokens/s | vs st-fp32 |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"engine-fp32", "st-fp32"}
    cosine = float(rows["engine-fp32"].split("|")[5])
    assert cosine >= 0.99999  # the same vectors as sentence-transformers


@pytest.mark.slow
def test_bench_decoder_prints_the_table():
    out = _run("bench_decoder.py", "--passages", "8", "--layers", "1", "--max-length", "64", "--rounds", "1",
               "--dtype", "float32")
    assert "| system | tokens/s | vs hf-padded |" in out
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert rows >= {"engine-fp32", "hf-padded-fp32"}
    cosine = float(out.split("min cosine engine vs transformers:")[1].split()[0])
    assert cosine >= 0.999, out


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu_passes():
    """The GPU check's CPU mode: every case runs in both loops and dtypes and matches CPU fp32."""
    out = _run("gpu_check.py", "--shapes", "tiny", "--passages", "12", "--check", "8")
    assert "gpu check: PASS" in out, out
    cases = ("embed/bert", "embed/xlm-roberta", "embed/qwen3-gqa", "embed/qwen3-bidirectional",
             "embed/mpnet-bias", "embed/distilbert", "embed/modernbert-window",
             "embed/gemma3-bidirectional-window",
             "score/bert-cross-encoder", "score/xlm-roberta-cross-encoder", "classify/bert",
             "score/qwen3-reranker")
    for case in cases:
        assert f"\n{case} (" in out
    rows = [line for line in out.splitlines() if line.startswith(("| fp32 | sdpa |", "| bf16 | sdpa |"))]
    assert len(rows) == len(cases) * 2 * 2 and not any("FAIL" in r for r in rows)


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory):
    """A random 2-layer MPNet folder laid out as sentence-transformers saves all-mpnet-base-v2
    (mean pooling, normalize), with a unit-scale relative bias so that the bias matters."""
    from transformers import MPNetConfig

    from tiny_models import save_tiny, write_sentence_transformers_files
    folder = tmp_path_factory.mktemp("bench") / "tiny-mpnet"
    cfg = MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=130, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, architectures=["MPNetModel"])
    save_tiny(folder, cfg, big=("relative_attention_bias",))
    write_sentence_transformers_files(folder, "mean", True, 64)
    return str(folder)


def _table(out: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")[1:-1]]
                                              for line in out.splitlines() if line.startswith("| "))}


@pytest.mark.slow
def test_bench_models_mpnet_prints_every_system(tiny_mpnet):
    out = _run("bench_models.py", "mpnet", "--model", tiny_mpnet, "--passages", "8", "--max-length", "64",
               "--rounds", "1")
    rows = _table(out)
    assert set(rows) >= set(f"{s}-{d}" for s in ("engine", "st", "hf-sorted") for d in ("fp32", "bf16")), out
    assert rows["st-bf16"][1] == "1.00x" and "goal engine-bf16 >= 1.6x st-bf16:" in out
    # fp32 systems give sentence-transformers' vectors (hf-sorted puts its sorted batches back in order)
    assert float(rows["engine-fp32"][3]) >= 0.99999 and float(rows["hf-sorted-fp32"][3]) >= 0.99999, out
    assert float(rows["engine-bf16"][3]) >= 0.99, out


@pytest.mark.slow
def test_bench_models_fallback_matches_native():
    out = _run("bench_models.py", "fallback", "--passages", "8", "--rounds", "1")
    rows = _table(out)
    assert set(rows) >= {"native-fp32", "transformers-fp32", "native-bf16", "transformers-bf16"}, out
    assert rows["native-fp32"][1] == "1.00x"
    assert float(rows["transformers-fp32"][3]) >= 0.99999 and float(rows["transformers-bf16"][3]) >= 0.99, out


@pytest.mark.slow
def test_bench_models_profile_groups_the_ops(tiny_mpnet):
    out = _run("bench_models.py", "profile", "--model", tiny_mpnet, "--passages", "8", "--max-length", "64")
    rows = _table(out)
    # a group has a row only when some profiled op fell into it (tiny shapes: times may print 0.00)
    assert {"linears (matmul)", "attention kernel (SDPA)"} <= set(rows), out
    assert abs(sum(float(r[1].rstrip("%")) for r in rows.values() if r[1].endswith("%")) - 100) < 5, out


@pytest.mark.slow
def test_bench_tokens_prints_the_tables():
    """SPLADE and ColBERT heads on MiniLM's first layer: the engine's outputs equal the peers' in
    fp32, and every table row and output size is printed."""
    out = _run("bench_tokens.py", "--passages", "4", "--layers", "1", "--max-length", "32", "--rounds", "1",
               "--threads", "1")
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith(("| system", "| output"))}
    peers = ("st-sparse", "st-multivector")
    assert {f"{s}-{d}" for s in ("engine", *peers) for d in ("fp32", "bf16")} <= set(rows)
    splade, colbert = out.split("\nsplade (")[1].split("\ncolbert (")
    assert "| engine-fp32 |" in splade and "| engine-fp32 |" in colbert
    splade_row = next(ln for ln in splade.splitlines() if ln.startswith("| engine-fp32 |")).split("|")
    assert splade_row[5].strip() == "4/4 same indices", splade_row
    assert float(splade_row[6].split()[-1]) <= 1e-4
    colbert_row = next(ln for ln in colbert.splitlines() if ln.startswith("| engine-fp32 |")).split("|")
    assert colbert_row[5].strip() == "4/4 same token counts", colbert_row
    assert float(colbert_row[6].split()[-1]) >= 0.99999
    sizes = {line.split("|")[1].strip(): float(line.split("|")[2].replace(",", ""))
             for line in out.split("| output | bytes per passage |")[1].splitlines() if line.startswith("| ") and "---" not in line}
    assert sizes["dense 384-d float32 vector (for comparison)"] == 1536
    assert sizes["128-d float32 tokens + int32 count"] - 4 == 2 * (sizes["128-d float16 tokens + int32 count"] - 4) > 0
    assert 0 < sizes["sparse int32 indices + float32 values"] < 30522 * 8 / 4  # sparse, not empty


def test_bench_int8_prints_the_table_and_the_gate():
    out = _run("bench_int8.py", "--passages", "20", "--rounds", "1", "--systems", "bf16-packed,int8")
    assert "| bf16-packed |" in out and "| int8 |" in out
    assert "int8 vs fp32: min cosine" in out and "top-10 overlap" in out


def test_cpu_account_charges_this_process():
    account = benchlib.CpuAccount().start()
    end = __import__("time").process_time() + 0.4
    while __import__("time").process_time() < end:  # 0.4 s of CPU in this process
        pass
    report = account.report()
    assert "steal" in report
    spent = {name: float(sec) for name, sec in (item.rsplit(" ", 1) for item in
                                                report.split("by process: ")[1].split(", "))}
    assert spent[Path(sys.executable).name] >= 0.3


def test_bench_pipeline_prints_rounds_and_notebook_calls(tmp_path):
    out = _run_subprocess("bench_pipeline.py", "--rows", "40", "--rounds", "1", "--notebook", "20",
               "--out", str(tmp_path / "scratch"))
    assert "| 1 | in-actor forward stage |" in out and "round 1 pipeline: cpu over" in out
    assert "ray::EmbedWorker" in out  # the actor's CPU is accounted under its Ray title
    notebook = [line for line in out.splitlines() if line.startswith("| first call")]
    assert len(notebook) == 1 and len(notebook[0].split("|")) == 5  # in process and Ray columns


def test_bench_attention_prints_every_path():
    from attention.cpu_varlen import bf16_paths, load
    if load()[1]:
        pytest.skip(f"cpu_varlen not built: {load()[1]}")
    out = _run("bench_attention.py", "--tokens", "300", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| MiniLM 12x32")]
    systems = {line.split(" | ")[2] for line in rows}
    assert systems == {"sdpa", "cpu_varlen/fma"} | {f"cpu_varlen/{p}" for p in bf16_paths()}
    assert all(float(line.split(" | ")[-1].rstrip(" |")) < 0.05 for line in rows)
