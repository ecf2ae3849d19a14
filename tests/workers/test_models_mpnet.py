"""Our packed MPNet (relative position bias through the attention interface) against
transformers' MPNetModel and sentence-transformers on the same random weights."""
import numpy as np
import pytest
import torch
from transformers import MPNetConfig

from tiny_models import assert_packed_hidden_match, LONG_TEXTS, cosines, hf_pooled, save_tiny, write_sentence_transformers_files
from workers import Engine, EngineConfig
from workers.models.mpnet import relative_position_bucket

TEXTS = LONG_TEXTS


def _config():
    cfg = MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=130, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    cfg.architectures = ["MPNetModel"]
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpnet")
    return folder, save_tiny(folder, _config(), big=("relative_attention_bias",))


def _engine(folder, **kw):
    return Engine(EngineConfig(model=str(folder), device="cpu", dtype=kw.pop("dtype", "float32"),
                               normalize=kw.pop("normalize", False), **kw))


def test_bucket_function_matches_transformers():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
    rel = torch.arange(-300, 301)[None, :]
    assert torch.equal(relative_position_bucket(rel), MPNetEncoder.relative_position_bucket(rel))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_matches_transformers_fp32(tiny, pooling):
    folder, hf = tiny
    engine = _engine(folder, pooling=pooling)
    assert engine.folder.architecture == "MPNetModel" and engine.workflow.name == "encoder"
    ours = engine.embed(TEXTS)
    ref = hf_pooled(hf, engine.processor(TEXTS).ids, pooling)
    print(f"MPNet fp32 {pooling}: max abs {np.abs(ours - ref).max():.2e}")
    assert max(len(x) for x in engine.processor(TEXTS).ids) > 80
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_packed_hidden_states_match_transformers(tiny):
    folder, hf = tiny
    engine = _engine(folder)
    assert_packed_hidden_match(engine, hf, TEXTS)


def test_bf16_cosine(tiny):
    folder, hf = tiny
    engine = _engine(folder, dtype="bfloat16", pooling="mean")
    cos = cosines(engine.embed(TEXTS), hf_pooled(hf, engine.processor(TEXTS).ids, "mean"))
    print(f"MPNet bf16 mean: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.999, cos


def test_alone_equals_packed_and_naive_equals_sdpa(tiny):
    folder, _ = tiny
    engine = _engine(folder, pooling="mean")
    packed = engine.embed(TEXTS)
    alone = np.concatenate([engine.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, packed, atol=1e-6, rtol=0)
    naive = _engine(folder, pooling="mean", attention_backend="naive").embed(TEXTS)
    np.testing.assert_allclose(naive, packed, atol=1e-5, rtol=0)


def test_relative_bias_is_used(tiny):
    """Zeroing the bias table changes the output: the bias really reaches the attention."""
    folder, hf = tiny
    engine = _engine(folder, pooling="mean")
    before = engine.embed(TEXTS[2:3])
    engine.model.encoder.relative_attention_bias.weight.zero_()
    assert np.abs(engine.embed(TEXTS[2:3]) - before).max() > 1e-3


def test_masked_lm_checkpoint_loads(tmp_path):
    from transformers import AutoModelForMaskedLM
    cfg = _config()
    cfg.architectures = ["MPNetForMaskedLM"]
    hf = save_tiny(tmp_path, cfg, big=("relative_attention_bias",), auto=AutoModelForMaskedLM)
    engine = _engine(tmp_path, pooling="mean")
    ref = hf_pooled(hf.mpnet, engine.processor(TEXTS).ids, "mean")
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=1e-5, rtol=0)


def test_matches_sentence_transformers(tiny, tmp_path):
    folder, _ = tiny
    st = pytest.importorskip("sentence_transformers")
    write_sentence_transformers_files(folder, pooling="mean", normalize=True, max_len=128)
    model = st.SentenceTransformer(str(folder), device="cpu")
    ref = model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    ours = _engine(folder, normalize=None).embed(TEXTS)
    cos = cosines(ours, ref)
    print(f"MPNet vs sentence-transformers fp32: max abs {np.abs(ours - ref).max():.2e}, "
          f"min cosine {cos.min():.8f}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
