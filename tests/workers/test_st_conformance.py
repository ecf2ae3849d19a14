"""Conformance: folders saved by the installed sentence-transformers, read by the library and by
the engine, give the same numbers (float32: cosine >= 0.99999 and |diff| <= 1e-5 on every row).

The matrix is made at test time with the library's own `save` (tiny random-weight BERT, the
MiniLM tokenizer): every Pooling mode, with and without Dense and Normalize, a short saved
maximum length with texts longer than it, prompts with and without `include_prompt`; the
CrossEncoder and SparseEncoder kinds; the folder's kind choosing the task; and folders naming
what the engine does not implement, refused by name. Older layouts (2.x-5.x config files,
checked in under tests/fixtures/st_layouts/) are in test_st_layouts.py.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.sparse_encoder.modules import SpladePooling

from tiny_models import CONFIGS, make_tiny_classifier, make_tiny_model, save_tiny
from workers import Engine, EngineConfig

SHORT = 24  # the saved maximum length: most texts below are longer
TEXTS = ["", "hello world", "what is dense retrieval?",
         "a much longer passage about vector indexes, packed batches and the prefill stage " * 3,
         "Berlin is the capital of Germany; its population is about 3.6 million people and it "
         "lies on the river Spree, with many museums, parks and lakes around it."]


def assert_rows_match(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    cos = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    assert cos.min() >= 0.99999, (cos, got[:, :4], want[:, :4])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st") / "bert"
    make_tiny_model(folder, "BertModel")
    return folder


def _save(base, folder, pooling, post=(), include_prompt=True, prompts=None, default_prompt=None):
    modules = [Transformer(str(base), max_seq_length=SHORT),
               Pooling(32, pooling_mode=pooling, include_prompt=include_prompt), *post]
    SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt,
                        device="cpu").save(str(folder))
    return folder


def _compare(folder, **engine_options):
    want = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    engine = Engine(EngineConfig(model=str(folder), dtype="float32", **engine_options))
    assert_rows_match(engine.embed(TEXTS), want)
    return engine


def _dense(n_in, n_out, act=torch.nn.Tanh(), **kw):
    torch.manual_seed(n_in * 7 + n_out)
    return Dense(n_in, n_out, activation_function=act, **kw)


MODES = ["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", ("cls", "mean")]
POSTS = {"none": lambda w: (), "dense+normalize": lambda w: (_dense(w, 16), Normalize())}


@pytest.mark.parametrize("post", sorted(POSTS))
@pytest.mark.parametrize("mode", MODES, ids=lambda m: "+".join(m) if isinstance(m, tuple) else m)
def test_every_pooling_mode_with_and_without_dense_and_normalize(base, tmp_path, mode, post):
    width = 32 * (len(mode) if isinstance(mode, tuple) else 1)
    engine = _compare(_save(base, tmp_path / "m", mode, POSTS[post](width)))
    assert engine.resolved.max_length == SHORT   # the saved length (tokenizer_config.json), not 128
    assert engine.dim == (16 if post != "none" else width)


@pytest.mark.parametrize("post", [
    pytest.param(lambda: (Normalize(),), id="normalize"),
    pytest.param(lambda: (_dense(32, 128, torch.nn.ReLU()), _dense(128, 8, torch.nn.Identity())), id="two-dense"),
    pytest.param(lambda: (_dense(32, 32, torch.nn.GELU(), use_residual=True),), id="residual-same-width"),
    pytest.param(lambda: (_dense(32, 12, torch.nn.SiLU(), bias=False, use_residual=True), Normalize()),
                 id="residual-projected"),
    pytest.param(lambda: (Normalize(), _dense(32, 16, torch.nn.Sigmoid())), id="normalize-then-dense"),
])
def test_post_pooling_stacks_in_modules_json_order(base, tmp_path, post):
    _compare(_save(base, tmp_path / "m", "mean", post()))


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "weightedmean", "mean_sqrt_len_tokens"])
def test_prompts_with_include_prompt_false(base, tmp_path, mode):
    folder = _save(base, tmp_path / "m", mode, include_prompt=False,
                   prompts={"query": "query: ", "document": "passage: "}, default_prompt="query")
    engine = _compare(folder)
    assert engine.resolved.prompt == "query: " and engine.resolved.skip_instruction
    want = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, prompt_name="document")
    got = Engine(EngineConfig(model=str(folder), dtype="float32", prompt_name="document")).embed(TEXTS)
    assert_rows_match(got, want)


def test_a_users_max_length_and_matryoshka_dimensions_still_win(base, tmp_path):
    folder = _save(base, tmp_path / "m", "mean", (_dense(32, 16), Normalize()))
    want = SentenceTransformer(str(folder), device="cpu", truncate_dim=8)
    want.max_seq_length = 40
    ref = want.encode(TEXTS, normalize_embeddings=True)
    engine = Engine(EngineConfig(model=str(folder), dtype="float32", max_length=40, dimensions=8))
    assert engine.resolved.max_length == 40 and engine.dim == 8
    assert_rows_match(engine.embed(TEXTS), ref)
    fp = engine.fingerprint()
    assert fp["dense"] == [["2_Dense", 32, 16, "Tanh", False]] and fp["attention"] == engine.backend.name


def test_cross_encoder_saved_max_length_and_activation(tmp_path):
    make_tiny_classifier(tmp_path / "clf", "BertForSequenceClassification")
    CrossEncoder(str(tmp_path / "clf"), max_length=SHORT, device="cpu").save(str(tmp_path / "ce"))
    pairs = [(TEXTS[2], t) for t in TEXTS[1:]] + [(TEXTS[3], TEXTS[4])]
    want = CrossEncoder(str(tmp_path / "ce"), device="cpu").predict(pairs)
    engine = Engine(EngineConfig(model=str(tmp_path / "ce"), dtype="float32"))  # no task: the kind's
    assert engine.config.task == "score" and engine.resolved.max_length == SHORT
    np.testing.assert_allclose(engine.score(pairs), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"CrossEncoder folder, which serves task 'score' or "
                                         r"'classify', not task='embed'"):
        Engine(EngineConfig(model=str(tmp_path / "ce"), task="embed"))


@pytest.fixture(scope="module")
def sparse_folder(tmp_path_factory):
    from transformers import AutoModelForMaskedLM
    root = tmp_path_factory.mktemp("splade")
    cfg = CONFIGS["BertModel"]()
    cfg.architectures = ["BertForMaskedLM"]
    save_tiny(root / "mlm", cfg, auto=AutoModelForMaskedLM)
    modules = [Transformer(str(root / "mlm"), transformer_task="fill-mask", max_seq_length=SHORT),
               SpladePooling("max", activation_function="log1p_relu", embedding_dimension=cfg.vocab_size)]
    SparseEncoder(modules=modules, device="cpu").save(str(root / "sparse"))
    return root / "sparse"


def test_sparse_encoder_folder_picks_sparse_and_its_max_length(sparse_folder):
    want = SparseEncoder(str(sparse_folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    want = want.to_dense().numpy()
    engine = Engine(EngineConfig(model=str(sparse_folder), dtype="float32"))
    assert engine.config.task == "sparse" and engine.resolved.max_length == SHORT
    assert engine.head.activation == "log1p_relu"
    got = np.zeros_like(want)
    for row, (idx, val) in enumerate(engine.embed_sparse(TEXTS)):
        got[row, idx] = val
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="SparseEncoder folder, which serves task 'sparse', not task='embed'"):
        Engine(EngineConfig(model=str(sparse_folder), task="embed"))


@pytest.mark.parametrize("module,match", [
    ("sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm", "LayerNorm"),
    ("sentence_transformers.models.WeightedLayerPooling", "WeightedLayerPooling"),
    ("sentence_transformers.base.modules.router.Router", "Router"),
    ("my_package.CustomPooling", "my_package.CustomPooling"),
])
def test_a_module_the_engine_lacks_is_refused_by_name(base, tmp_path, module, match):
    import json
    folder = _save(base, tmp_path / "m", "mean", (Normalize(),))
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "x", "path": "x", "type": module})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=rf"modules.json names module '[^']*{re.escape(match)}' .*does not implement"):
        Engine(EngineConfig(model=str(folder)))


@pytest.mark.parametrize("file,edit,match", [
    ("1_Pooling/config.json", {"pooling_mode": "median"}, "pooling mode 'median' is not supported"),
    ("1_Pooling/config.json", {"pooling_weights": [1, 2]}, r"key\(s\) \['pooling_weights'\]"),
    ("2_Dense/config.json", {"activation_function": "torch.nn.modules.activation.Softplus"}, "Softplus"),
    ("2_Dense/config.json", {"activation_function": "my.Act"}, "custom code"),
    ("sentence_bert_config.json", {"processing_kwargs": {"text": {"padding": "max_length"}}},
     "processing_kwargs"),
    ("sentence_bert_config.json", {"do_lower_case": True, "model_args": {"num_labels": 3}},
     r"model_args.num_labels"),
])
def test_a_key_the_engine_does_not_implement_is_refused(base, tmp_path, file, edit, match):
    import json
    folder = _save(base, tmp_path / "m", "mean", (_dense(32, 16),))
    cfg = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(ValueError, match=match):
        Engine(EngineConfig(model=str(folder)))


def test_do_lower_case_is_refused_only_where_it_would_change_the_tokens(base, tmp_path):
    import json
    folder = _save(base, tmp_path / "m", "mean")
    cfg = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**cfg, "do_lower_case": True}))
    _compare(folder)   # the MiniLM tokenizer lowercases already: the library changes nothing
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())   # AutoTokenizer applies it
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "do_lower_case": False}))
    with pytest.raises(ValueError, match="do_lower_case, but the tokenizer does not lowercase"):
        Engine(EngineConfig(model=str(folder)))


def test_do_lower_case_on_a_folder_with_only_vocab_txt(base, tmp_path):
    """No tokenizer.json: the tokenizer is built from vocab.txt and tokenizer_config.json (which
    lowercases), as AutoTokenizer and the library build it; do_lower_case changes nothing."""
    import json
    import shutil
    folder = _save(base, tmp_path / "m", "mean")
    (folder / "tokenizer.json").unlink()
    shutil.copy(base / "vocab.txt", folder / "vocab.txt")   # transformers 5 saves tokenizer.json only
    cfg = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**cfg, "do_lower_case": True}))
    _compare(folder)
