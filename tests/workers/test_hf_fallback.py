"""The transformers fallback (workers/loading/fallback.py, workers/loading/hf_model.py): architectures we do not
implement run padded and length-sorted behind the same Engine API, equal to transformers itself;
BERT forced through it equals the native packed body."""
import json
import logging

import numpy as np
import pytest
import torch
from transformers import DebertaV2Config, ElectraConfig

from tiny_models import (LONG_TEXTS, hf_pooled, make_tiny_classifier, make_tiny_model, save_tiny,
                         write_sentence_transformers_files)
from workers import Engine, EngineConfig

TEXTS = LONG_TEXTS + ["short", "a b c d e f g", "one more passage of medium length for padding"]
_SMALL = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
CONFIGS = {
    "ElectraModel": lambda: ElectraConfig(**_SMALL, embedding_size=16),
    "DebertaV2Model": lambda: DebertaV2Config(**_SMALL, relative_attention=True, max_relative_positions=64,
                                              pos_att_type=["p2c", "c2p"], type_vocab_size=0),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    config = CONFIGS[request.param]()
    config.architectures = [request.param]
    return folder, save_tiny(folder, config)


def _engine(folder, **kw):
    kw = {"device": "cpu", "dtype": "float32", "normalize": False, **kw}
    return Engine(EngineConfig(model=str(folder), **kw))


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_unimplemented_architecture_matches_transformers(tiny, pooling):
    folder, hf = tiny
    # A small budget: several padded sub-batches, each mixing lengths (padding really happens).
    engine = _engine(folder, pooling=pooling, max_num_batched_tokens=160)
    ours = engine.embed(TEXTS)
    ids = [engine.processor.tokenizer(t)["input_ids"] for t in TEXTS]
    if pooling == "last":
        ref = np.stack([hf(input_ids=torch.tensor([i])).last_hidden_state[0, -1].detach().numpy()
                        for i in ids])
    else:
        ref = hf_pooled(hf, ids, pooling)
    assert engine.implementation == "transformers"
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_matches_sentence_transformers(tiny):
    from sentence_transformers import SentenceTransformer
    folder, _ = tiny
    write_sentence_transformers_files(folder, "mean", normalize=True, max_len=64)
    ours = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32")).embed(TEXTS)
    ref = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_one_warning_names_the_architecture(tiny, caplog):
    folder, _ = tiny
    with caplog.at_level(logging.WARNING):
        engine = _engine(folder)
        engine.embed(TEXTS)
        engine.embed(TEXTS[:2])
    warnings = [r.getMessage() for r in caplog.records if "packing is off" in r.getMessage()]
    assert len(warnings) == 1 and engine.folder.architecture in warnings[0]
    assert engine.fingerprint()["implementation"] == "transformers"


def test_native_refuses_an_unknown_architecture(tiny):
    folder, _ = tiny
    with pytest.raises(ValueError, match="is not supported; supported: .*BertModel"):
        _engine(folder, implementation="native")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    make_tiny_model(folder, "BertModel")
    return folder


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bert_through_transformers_equals_native(bert, pooling):
    native = _engine(bert, pooling=pooling)
    forced = _engine(bert, pooling=pooling, implementation="transformers", max_num_batched_tokens=128)
    assert native.implementation == "native" and forced.implementation == "transformers"
    np.testing.assert_allclose(forced.embed(TEXTS), native.embed(TEXTS), atol=1e-5, rtol=0)
    assert "implementation" not in native.fingerprint()  # existing manifests stay valid
    assert forced.fingerprint() == {**native.fingerprint(), "implementation": "transformers"}


def test_bert_normalize_and_dimensions_as_native(bert):
    kw = dict(pooling="mean", normalize=True, dimensions=16)
    forced = _engine(bert, implementation="transformers", **kw).embed(TEXTS)
    np.testing.assert_allclose(forced, _engine(bert, **kw).embed(TEXTS), atol=1e-5, rtol=0)
    assert forced.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(forced, axis=1), 1.0, atol=1e-6)


def test_sequence_classifier_through_transformers_equals_native(tmp_path):
    make_tiny_classifier(tmp_path, "BertForSequenceClassification", num_labels=3)
    kw = dict(model=str(tmp_path), device="cpu", dtype="float32")
    native = Engine(EngineConfig(task="classify", **kw))
    forced = Engine(EngineConfig(task="classify", implementation="transformers", **kw))
    np.testing.assert_allclose(forced.classify(TEXTS), native.classify(TEXTS), atol=1e-5, rtol=0)


def test_cross_encoder_pairs_through_transformers_equal_native(tmp_path):
    make_tiny_classifier(tmp_path, "BertForSequenceClassification", num_labels=1)
    pairs = [(q, d) for q in TEXTS[:3] for d in TEXTS[2:5]]
    kw = dict(model=str(tmp_path), device="cpu", dtype="float32", task="score")
    native = Engine(EngineConfig(**kw)).score(pairs)
    forced = Engine(EngineConfig(implementation="transformers", **kw)).score(pairs)
    np.testing.assert_allclose(forced, native, atol=1e-5, rtol=0)


def test_auto_map_only_architecture_is_refused(bert, tmp_path):
    for f in bert.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(architectures=["MyCustomEncoder"], auto_map={"AutoModel": "modeling_custom.MyCustomEncoder"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="MyCustomEncoder.*auto_map.*never run"):
        _engine(tmp_path)


def test_implementation_is_validated():
    with pytest.raises(ValueError, match="implementation='fast' is not supported"):
        EngineConfig(implementation="fast")


def test_token_states_through_transformers_equal_native(bert):
    native = Engine(EngineConfig(model=str(bert), device="cpu", dtype="float32", task="tokens"))
    forced = Engine(EngineConfig(model=str(bert), device="cpu", dtype="float32", task="tokens",
                                 implementation="transformers"))
    for a, b in zip(forced.embed_tokens(TEXTS), native.embed_tokens(TEXTS)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_preflight_checks_a_fallback_folder(tiny):
    """The driver's pre-Ray check runs on an architecture only transformers serves, and refuses
    a task the fallback cannot run, as the engine would."""
    from workers import preflight
    folder, _ = tiny
    assert preflight(EngineConfig(model=str(folder))).task == "embed"
    with pytest.raises(ValueError, match="not supported by the transformers fallback"):
        preflight(EngineConfig(model=str(folder), task="sparse"))
