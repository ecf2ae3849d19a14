"""Our packed Gemma3 text model with bidirectional attention (EmbeddingGemma layout: sliding and
full layers, (1 + w) RMSNorm, embedding scale, q/k norm, query_pre_attn_scalar, GQA) against
transformers' Gemma3TextModel, and the sentence-transformers folder (mean -> 2_Dense -> 3_Dense
-> Normalize, query/document prompts) against SentenceTransformer on the same folder."""
import json

import numpy as np
import pytest
import torch
from transformers import Gemma3TextConfig

from tiny_models import assert_packed_hidden_match, LONG_TEXTS, cosines, hf_pooled, save_tiny, write_embeddinggemma_st_files
from workers import Engine, EngineConfig

TEXTS = LONG_TEXTS
SAVED_WINDOW = 32  # config.json's sliding_window: transformers sees |i - j| <= 16 bidirectionally
HIDDEN = 64


def _config(**kw):
    cfg = Gemma3TextConfig(vocab_size=30522, hidden_size=HIDDEN, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, query_pre_attn_scalar=24, sliding_window=SAVED_WINDOW,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                        "sliding_attention"],
                           max_position_embeddings=256, use_bidirectional_attention=True,
                           pad_token_id=0, bos_token_id=101, eos_token_id=102, **kw)
    cfg.architectures = ["Gemma3TextModel"]
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3")
    hf = save_tiny(folder, _config())
    return folder, hf


def _engine(folder, **kw):
    return Engine(EngineConfig(model=str(folder), device="cpu", dtype=kw.pop("dtype", "float32"),
                               normalize=kw.pop("normalize", False), **kw))


def test_workflow_layers_and_windows(tiny):
    folder, hf = tiny
    engine = _engine(folder)
    assert (engine.workflow.name, engine.resolved.pooling) == ("decoder_bidirectional", "mean")
    assert json.loads((folder / "config.json").read_text())["sliding_window"] == SAVED_WINDOW
    assert [l.self_attn.window for l in engine.model.layers] == [(16, 16), (16, 16), None, (16, 16)]
    assert max(len(x) for x in engine.processor(TEXTS).ids) > 2 * SAVED_WINDOW + 16
    with pytest.raises(ValueError, match="bidirectional"):
        _engine(folder, enable_bidirectional=False)


def test_pooled_matches_transformers_fp32(tiny):
    folder, hf = tiny
    engine = _engine(folder)
    ours = engine.embed(TEXTS)
    ref = hf_pooled(hf, engine.processor(TEXTS).ids, "mean")
    print(f"Gemma3 fp32 mean: max abs {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_packed_hidden_states_match_transformers(tiny):
    folder, hf = tiny
    engine = _engine(folder)
    assert_packed_hidden_match(engine, hf, TEXTS)


def test_bf16_cosine_alone_equals_packed_naive_equals_sdpa(tiny):
    folder, hf = tiny
    engine = _engine(folder, dtype="bfloat16")
    cos = cosines(engine.embed(TEXTS), hf_pooled(hf, engine.processor(TEXTS).ids, "mean"))
    print(f"Gemma3 bf16 mean: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.999, cos
    fp32 = _engine(folder)
    packed = fp32.embed(TEXTS)
    np.testing.assert_allclose(np.concatenate([fp32.embed([t]) for t in TEXTS]), packed, atol=2e-6, rtol=0)
    np.testing.assert_allclose(_engine(folder, attention_backend="naive").embed(TEXTS), packed, atol=1e-5)


def test_causal_config_is_refused(tmp_path):
    save_tiny(tmp_path, _config())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "use_bidirectional_attention": False}))
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        _engine(tmp_path)


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddinggemma")
    hf = save_tiny(folder, _config(), seed=1)
    write_embeddinggemma_st_files(folder, HIDDEN, 4 * HIDDEN)
    return folder, hf


def test_dense_modules_and_normalize_match_sentence_transformers(st_folder):
    st = pytest.importorskip("sentence_transformers")
    folder, _ = st_folder
    engine = _engine(folder, normalize=None)
    assert engine.folder.st_dense and engine.resolved.normalize
    assert engine.folder.weights[-2:] == (folder / "2_Dense" / "model.safetensors",
                                          folder / "3_Dense" / "model.safetensors")
    model = st.SentenceTransformer(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"})
    ours, ref = engine.embed(TEXTS), model.encode(TEXTS, convert_to_numpy=True)
    print(f"EmbeddingGemma layout vs sentence-transformers fp32: max abs {np.abs(ours - ref).max():.2e}, "
          f"min cosine {cosines(ours, ref).min():.8f}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    for name in ("query", "document"):
        prompted = _engine(folder, normalize=None, prompt_name=name).embed(TEXTS)
        np.testing.assert_allclose(prompted, model.encode(TEXTS, prompt_name=name), atol=1e-5, rtol=0)
    bf16 = _engine(folder, normalize=None, dtype="bfloat16").embed(TEXTS)
    print(f"EmbeddingGemma layout bf16 vs sentence-transformers fp32: min cosine {cosines(bf16, ref).min():.6f}")
    assert cosines(bf16, ref).min() >= 0.999


def test_dense_weights_are_in_the_fingerprint(st_folder, tmp_path):
    folder, _ = st_folder
    before = _engine(folder).fingerprint()["model_hash"]
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    from safetensors.torch import save_file
    save_file({"linear.weight": torch.zeros(4 * HIDDEN, HIDDEN)}, str(copy / "2_Dense" / "model.safetensors"))
    assert _engine(copy).fingerprint()["model_hash"] != before
