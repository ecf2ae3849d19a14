"""The engine on the real bundled MiniLM against sentence-transformers, plus its contract:
order, batch invariance, empty inputs, truncation, huge strings, Matryoshka dimensions."""
import random

import numpy as np
import pytest

from workers import Engine, EngineConfig
from workers.loading.model_folder import default_model_path

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Embeddings map text to vectors so that similar meanings land close together.",
    "Ünïcödé, emoji 🙂🚀, CJK 日本語のテキスト, RTL שלום עולם, combining e\u0301",
    "x",
    "A long passage. " * 200,            # over 256 tokens: truncated
    "tab\tseparated\tand\nnew lines\r\n and \x07 control characters",
]


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def st_vectors():
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(default_model_path()), device="cpu")
    return model.encode(TEXTS, convert_to_numpy=True)


@pytest.fixture(scope="module")
def fp32():
    return Engine(EngineConfig(dtype="float32"))


@pytest.fixture(scope="module")
def bf16():
    return Engine(EngineConfig(dtype="bfloat16"))


@pytest.mark.slow
def test_float32_matches_sentence_transformers(fp32, st_vectors):
    ours = fp32.embed(TEXTS)
    cos = _cos(ours, st_vectors)
    assert cos.min() >= 0.99999, f"cosines {cos}; first values {ours[0, :4]} vs {st_vectors[0, :4]}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # ST's Normalize


@pytest.mark.slow
def test_bfloat16_matches_sentence_transformers(bf16, st_vectors):
    cos = _cos(bf16.embed(TEXTS), st_vectors)
    assert cos.min() >= 0.999, cos


def test_defaults_come_from_the_sentence_transformers_folder(fp32):
    r = fp32.resolved
    assert (r.pooling, r.normalize, r.max_length, fp32.dim) == ("mean", True, 256, 384)


@pytest.mark.parametrize("engine_name", ["fp32", "bf16"])
def test_text_alone_equals_text_in_a_packed_batch(engine_name, request):
    engine = request.getfixturevalue(engine_name)
    batch = engine.embed(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = engine.embed([text])[0]
        tol = 1e-5 if engine_name == "fp32" else 2e-2
        np.testing.assert_allclose(alone, batch[i], atol=tol)


def test_order_preserved_across_many_batches(fp32):
    rng = random.Random(0)
    texts = [" ".join(["word"] * rng.randint(1, 200)) + f" {i}" for i in range(120)]
    engine = Engine(EngineConfig(dtype="float32", max_num_batched_tokens=512, max_num_seqs=7))
    ours = engine.embed(texts)
    assert engine.stats.batches > 10
    perm = list(range(len(texts)))
    rng.shuffle(perm)
    shuffled = fp32.embed([texts[i] for i in perm])
    np.testing.assert_allclose(shuffled, ours[perm], atol=1e-5)


def test_empty_list_and_empty_string(fp32):
    assert fp32.embed([]).shape == (0, 384)
    empty = fp32.embed([""])
    assert empty.shape == (1, 384) and np.isfinite(empty).all()
    # defined as the special tokens alone: [CLS] [SEP]
    assert fp32.processor([""]).ids[0].tolist() == [101, 102]


def test_non_string_named_by_index(fp32):
    with pytest.raises(TypeError, match="index 2 is NoneType"):
        fp32.embed(["a", "b", None])
    with pytest.raises(TypeError, match="list of strings"):
        fp32.embed("a bare string")


def test_truncation_counted_and_error_mode(fp32):
    before = fp32.stats.truncated
    fp32.embed(["short", "word " * 400, "word " * 1000])
    assert fp32.stats.truncated - before == 2
    strict = Engine(EngineConfig(dtype="float32", truncation="error", max_length=32))
    with pytest.raises(ValueError, match="index 1 is longer than max_length=32"):
        strict.embed(["fine", "word " * 40])


def test_huge_string_is_cut_before_tokenizing_with_the_same_result(fp32):
    words = "retrieval augmented generation needs good passage embeddings "
    huge = words * (10_000_000 // len(words))                      # ~10 MB
    head = huge[:20_000]
    tok = fp32.processor([huge, head])
    assert tok.ids[0].tolist() == tok.ids[1].tolist() and len(tok.ids[0]) == 256
    np.testing.assert_allclose(fp32.embed([huge]), fp32.embed([head]), atol=1e-6)


def test_whitespace_runs_do_not_lose_tokens_to_the_cut(fp32):
    """A cut by characters must not drop words that tokenizing the whole string would keep."""
    text = " " * 10_000 + "meaningful words after a long blank run"
    ids = fp32.processor([text]).ids[0]
    assert len(ids) > 2
    np.testing.assert_allclose(fp32.embed([text]), fp32.embed([text.strip()]), atol=1e-6)


def test_matryoshka_dimensions_truncate_then_renormalize(fp32):
    small = Engine(EngineConfig(dtype="float32", dimensions=64))
    full = fp32.embed(TEXTS)[:, :64]
    expect = full / np.linalg.norm(full, axis=1, keepdims=True)
    ours = small.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(ours, expect, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_pooling_override(pooling, fp32):
    engine = Engine(EngineConfig(dtype="float32", pooling=pooling, normalize=False))
    assert engine.resolved.pooling == pooling
    naive = Engine(EngineConfig(dtype="float32", pooling=pooling, normalize=False,
                                attention_backend="naive"))
    np.testing.assert_allclose(engine.embed(TEXTS), naive.embed(TEXTS), atol=1e-4)


def test_sdpa_engine_matches_naive_attention_engine(fp32):
    naive = Engine(EngineConfig(dtype="float32", attention_backend="naive"))
    np.testing.assert_allclose(fp32.embed(TEXTS), naive.embed(TEXTS), atol=1e-5)


def test_fingerprint_names_what_determines_the_vectors(fp32):
    fp = fp32.fingerprint()
    assert fp["pooling"] == "mean" and fp["dimensions"] == 384 and fp["dtype"] == "float32"
    assert fp["model_hash"] == Engine(EngineConfig(dtype="float32")).fingerprint()["model_hash"]


@pytest.mark.parametrize("kwargs,match", [
    ({"dtype": "float64"}, "dtype='float64' is not supported"),
    ({"pooling": "maxx"}, "pooling='maxx'"), ({"pooling": "mean+"}, "pooling=''"),
    ({"max_length": 0}, "max_length=0 must be a positive integer"),
    ({"max_length": 512, "max_num_batched_tokens": 256}, "exceeds max_num_batched_tokens"),
    ({"device": "tpu"}, "device='tpu'"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)


def test_max_length_beyond_positions_and_dims_beyond_hidden():
    with pytest.raises(ValueError, match="max_length=1000 exceeds"):
        Engine(EngineConfig(max_length=1000))
    with pytest.raises(ValueError, match="dimensions=500 exceeds the model's output width 384"):
        Engine(EngineConfig(dimensions=500))


def test_chunked_tokenizing_keeps_vectors_and_fills_batches(monkeypatch):
    import workers.engine.engine as engine_module
    texts = [f"passage number {i} " * (i % 7 + 1) for i in range(50)]
    cfg = EngineConfig(dtype="float32", max_length=64, max_num_batched_tokens=64)
    whole = Engine(cfg)
    ref = whole.embed(texts)
    monkeypatch.setattr(engine_module, "_TOKENIZE_CHUNK", 4)
    chunked = Engine(cfg)
    np.testing.assert_allclose(chunked.embed(texts), ref, atol=1e-5)
    assert chunked.stats.batches == whole.stats.batches  # leftovers carried into the next chunk
    assert chunked.stats.tokens == whole.stats.tokens
