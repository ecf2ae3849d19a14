"""Our packed ModernBERT (RoPE per layer type, global layers every N, local sliding-window
layers) against transformers' ModernBertModel (eager attention) on the same random weights."""
import numpy as np
import pytest
from transformers import AutoModelForMaskedLM, ModernBertConfig

from tiny_models import assert_packed_hidden_match, LONG_TEXTS, cosines, hf_pooled, save_tiny, write_sentence_transformers_files
from workers import Engine, EngineConfig

TEXTS = LONG_TEXTS
WINDOW = 16  # local_attention: each token sees 8 positions either side


def _config(arch="ModernBertModel", **kw):
    cfg = ModernBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=256, local_attention=WINDOW,
                           global_attn_every_n_layers=3, pad_token_id=0, bos_token_id=101,
                           eos_token_id=102, cls_token_id=101, sep_token_id=102, **kw)
    cfg.architectures = [arch]
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modernbert")
    return folder, save_tiny(folder, _config())


def _engine(folder, **kw):
    return Engine(EngineConfig(model=str(folder), device="cpu", dtype=kw.pop("dtype", "float32"),
                               normalize=kw.pop("normalize", False), **kw))


def test_layer_pattern_and_windows(tiny):
    folder, hf = tiny
    engine = _engine(folder)
    assert [l.layer_type for l in engine.model.layers] == hf.config.layer_types == \
        ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert [l.attn.window for l in engine.model.layers] == [None, (8, 8), (8, 8), None]
    assert max(len(x) for x in engine.processor(TEXTS).ids) > 4 * WINDOW


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_matches_transformers_fp32(tiny, pooling):
    folder, hf = tiny
    engine = _engine(folder, pooling=pooling)
    ours = engine.embed(TEXTS)
    ref = hf_pooled(hf, engine.processor(TEXTS).ids, pooling)
    print(f"ModernBERT fp32 {pooling}: max abs {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_packed_hidden_states_match_transformers(tiny):
    folder, hf = tiny
    engine = _engine(folder)
    assert_packed_hidden_match(engine, hf, TEXTS)


def test_window_matters(tiny):
    """Without the local window the long texts come out different: the window is really applied."""
    folder, hf = tiny
    engine = _engine(folder, pooling="mean")
    before = engine.embed(TEXTS[-1:])
    for layer in engine.model.layers:
        layer.attn.window = None
    assert np.abs(engine.embed(TEXTS[-1:]) - before).max() > 1e-4


def test_bf16_cosine_alone_equals_packed_naive_equals_sdpa(tiny):
    folder, hf = tiny
    engine = _engine(folder, dtype="bfloat16", pooling="mean")
    cos = cosines(engine.embed(TEXTS), hf_pooled(hf, engine.processor(TEXTS).ids, "mean"))
    print(f"ModernBERT bf16 mean: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.999, cos
    fp32 = _engine(folder, pooling="mean")
    packed = fp32.embed(TEXTS)
    alone = np.concatenate([fp32.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, packed, atol=1e-6, rtol=0)
    naive = _engine(folder, pooling="mean", attention_backend="naive").embed(TEXTS)
    np.testing.assert_allclose(naive, packed, atol=1e-5, rtol=0)


def test_masked_lm_checkpoint_loads_and_matches_sentence_transformers(tmp_path):
    hf = save_tiny(tmp_path, _config("ModernBertForMaskedLM"), auto=AutoModelForMaskedLM)
    engine = _engine(tmp_path, pooling="mean")
    ref = hf_pooled(hf.model, engine.processor(TEXTS).ids, "mean")
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=1e-5, rtol=0)
    st = pytest.importorskip("sentence_transformers")
    write_sentence_transformers_files(tmp_path, pooling="mean", normalize=True, max_len=256)
    st_ref = st.SentenceTransformer(str(tmp_path), device="cpu",
                                    model_kwargs={"attn_implementation": "eager"}).encode(TEXTS)
    ours = _engine(tmp_path, normalize=None).embed(TEXTS)
    print(f"ModernBERT vs sentence-transformers fp32: max abs {np.abs(ours - st_ref).max():.2e}")
    np.testing.assert_allclose(ours, st_ref, atol=1e-5, rtol=0)
