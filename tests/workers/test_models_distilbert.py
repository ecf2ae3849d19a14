"""Our packed DistilBERT against transformers' DistilBertModel and sentence-transformers on the
same random weights (learned and sinusoidal position embeddings, MLM checkpoints)."""
import numpy as np
import pytest
from transformers import AutoModelForMaskedLM, DistilBertConfig

from tiny_models import assert_packed_hidden_match, LONG_TEXTS, cosines, hf_pooled, save_tiny, write_sentence_transformers_files
from workers import Engine, EngineConfig

TEXTS = LONG_TEXTS


def _config(arch="DistilBertModel", **kw):
    cfg = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=128, dropout=0.0, attention_dropout=0.0, **kw)
    cfg.architectures = [arch]
    return cfg


@pytest.fixture(scope="module", params=["learned", "sinusoidal"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"distilbert-{request.param}")
    cfg = _config(sinusoidal_pos_embds=request.param == "sinusoidal")
    return request.param, folder, save_tiny(folder, cfg)


def _engine(folder, **kw):
    return Engine(EngineConfig(model=str(folder), device="cpu", dtype=kw.pop("dtype", "float32"),
                               normalize=kw.pop("normalize", False), **kw))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_matches_transformers_fp32(tiny, pooling):
    kind, folder, hf = tiny
    engine = _engine(folder, pooling=pooling)
    assert engine.workflow.name == "encoder" and not engine.model.uses_token_types
    ours = engine.embed(TEXTS)
    ref = hf_pooled(hf, engine.processor(TEXTS).ids, pooling)
    print(f"DistilBERT ({kind}) fp32 {pooling}: max abs {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_packed_hidden_states_match_transformers(tiny):
    _, folder, hf = tiny
    engine = _engine(folder)
    assert_packed_hidden_match(engine, hf, TEXTS)


def test_bf16_cosine_and_alone_equals_packed(tiny):
    kind, folder, hf = tiny
    engine = _engine(folder, dtype="bfloat16", pooling="mean")
    packed = engine.embed(TEXTS)
    cos = cosines(packed, hf_pooled(hf, engine.processor(TEXTS).ids, "mean"))
    print(f"DistilBERT ({kind}) bf16 mean: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.999, cos
    fp32 = _engine(folder, pooling="mean")
    alone = np.concatenate([fp32.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, fp32.embed(TEXTS), atol=1e-6, rtol=0)


def test_masked_lm_checkpoint_loads_without_its_head(tmp_path):
    hf = save_tiny(tmp_path, _config("DistilBertForMaskedLM"), auto=AutoModelForMaskedLM)
    engine = _engine(tmp_path, pooling="mean")
    ref = hf_pooled(hf.distilbert, engine.processor(TEXTS).ids, "mean")
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=1e-5, rtol=0)


def test_matches_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    save_tiny(tmp_path, _config())
    write_sentence_transformers_files(tmp_path, pooling="mean", normalize=True, max_len=128)
    ref = st.SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    ours = _engine(tmp_path, normalize=None).embed(TEXTS)
    print(f"DistilBERT vs sentence-transformers fp32: max abs {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
