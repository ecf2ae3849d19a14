"""Folder layouts older sentence-transformers versions wrote (2.2, 2.7, 3.0, 5.0), kept as config
files under tests/fixtures/st_layouts/ (weights made here), so they stay covered whatever version
is installed: the installed library and the engine read each the same way. Then a folder the
engine cannot serve is refused by name in the pipeline (before Ray starts) and the CLI (exit 2).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer, SparseEncoder
from transformers import AutoModelForMaskedLM

import pipeline
from test_st_conformance import TEXTS, assert_rows_match
from tiny_models import CONFIGS, make_tiny_model, save_tiny
from workers import Engine, EngineConfig
from scripts import run_job

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "st_layouts"


def _layout_folder(tmp_path: Path, name: str) -> Path:
    """A tiny random model with the fixture's sentence-transformers files laid over it."""
    folder = tmp_path / name
    if name.endswith("sparse"):
        cfg = CONFIGS["BertModel"]()
        cfg.architectures = ["BertForMaskedLM"]
        save_tiny(folder, cfg, auto=AutoModelForMaskedLM)
    else:
        make_tiny_model(folder, "BertModel")
    shutil.copytree(FIXTURES / name, folder, dirs_exist_ok=True)
    for dense in folder.glob("*_Dense"):
        cfg = json.loads((dense / "config.json").read_text())
        torch.manual_seed(3)
        save_file({"linear.weight": torch.randn(cfg["out_features"], cfg["in_features"]) * 0.3,
                   "linear.bias": torch.randn(cfg["out_features"]) * 0.1}, str(dense / "model.safetensors"))
    if name == "v5.0-lasttoken":  # the length lives in the tokenizer's config since 5.x
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "model_max_length": 24}))
    return folder


@pytest.mark.parametrize("name,length", [("v2.2-mean-normalize", 24), ("v2.2-cls-max", 20),
                                         ("v2.7-weightedmean-prompts", 24), ("v3.0-cls-dense", 24),
                                         ("v5.0-lasttoken", 24)])
def test_old_sentence_transformer_layouts(tmp_path, name, length):
    folder = _layout_folder(tmp_path, name)
    want = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    engine = Engine(EngineConfig(model=str(folder), dtype="float32"))
    assert engine.config.task == "embed" and engine.resolved.max_length == length
    assert_rows_match(engine.embed(TEXTS), want)


def test_old_sparse_encoder_layout(tmp_path):
    folder = _layout_folder(tmp_path, "v5.0-sparse")
    want = SparseEncoder(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    engine = Engine(EngineConfig(model=str(folder), dtype="float32"))
    assert engine.config.task == "sparse" and engine.resolved.max_length == 20
    got = np.zeros_like(want)
    for row, (idx, val) in enumerate(engine.embed_sparse(TEXTS)):
        got[row, idx] = val
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_plain_folder_reads_the_tokenizers_max_length_capped_by_positions(tmp_path):
    """No sentence-transformers files: the length is AutoTokenizer's model_max_length (capped
    by the positions, as sentence-transformers caps it), and the ids are AutoTokenizer's."""
    from transformers import AutoTokenizer
    make_tiny_model(tmp_path, "BertModel")   # 128 positions; the MiniLM tokenizer says 512
    assert Engine(EngineConfig(model=str(tmp_path))).resolved.max_length == 128
    tok = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tok, "model_max_length": 16}))
    engine = Engine(EngineConfig(model=str(tmp_path)))
    assert engine.resolved.max_length == 16 and engine.config.task == "embed"
    ref = AutoTokenizer.from_pretrained(str(tmp_path))(TEXTS, truncation=True)["input_ids"]
    assert [ids.tolist() for ids in engine.processor(TEXTS).ids] == ref


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """A folder whose modules.json names a module the engine lacks, and a tiny corpus."""
    root = tmp_path_factory.mktemp("refused")
    folder = _layout_folder(root, "v2.2-mean-normalize")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_LayerNorm",
                    "type": "sentence_transformers.models.LayerNorm"})
    (folder / "modules.json").write_text(json.dumps(modules))
    pq.write_table(pa.table({"text": TEXTS[1:]}), root / "corpus.parquet")
    return folder, root / "corpus.parquet"


def test_pipeline_refuses_it_before_ray_starts(refused, tmp_path):
    import ray
    folder, corpus = refused
    was_up = ray.is_initialized()
    with pytest.raises(pipeline.InputError, match=r"names module 'sentence_transformers.models.LayerNorm'"):
        pipeline.run(str(corpus), output=str(tmp_path / "out"), model=str(folder), progress=False,
                     in_process_rows=0)
    assert ray.is_initialized() == was_up and not (tmp_path / "out").exists()


def test_cli_refuses_it_with_exit_2(refused, tmp_path):
    folder, corpus = refused
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = run_job("embed_corpus.py", "--input", str(corpus), "--output", str(tmp_path / "out"),
                   "--model", str(folder), env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sentence_transformers.models.LayerNorm" in done.stderr + done.stdout


def test_max_length_past_the_positions_is_refused_before_ray(tmp_path):
    import ray
    was_up = ray.is_initialized()
    with pytest.raises(pipeline.InputError, match=r"max_length=1000 exceeds .*512 positions"):
        pipeline.run(["a passage"], max_length=1000, progress=False, in_process_rows=0)
    assert ray.is_initialized() == was_up


def test_cli_cross_encoder_folder_without_task_asks_for_the_pair_column(tmp_path):
    from sentence_transformers import CrossEncoder
    from tiny_models import make_tiny_classifier
    make_tiny_classifier(tmp_path / "clf", "BertForSequenceClassification")
    CrossEncoder(str(tmp_path / "clf"), device="cpu").save(str(tmp_path / "ce"))
    done = run_job("embed_corpus.py", "--input", "x.parquet", "--output", str(tmp_path / "out"),
                   "--model", str(tmp_path / "ce"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the --model folder is a cross-encoder, so the task is score" in done.stderr
