"""task="sparse": SPLADE vs sentence-transformers' SparseEncoder on a tiny random
BertForMaskedLM folder saved by SparseEncoder itself; top_k; the MLM head run in chunks."""
import numpy as np
import pytest

from tiny_models import make_tiny_splade
from workers import Engine, EngineConfig
from workers.heads.ragged import top_k_sparse

TEXTS = [
    "what is a sparse lexical representation",
    "",
    "the quick brown fox jumps over the lazy dog near the river bank " * 4,
    "x",
    "Ünïcödé 日本語 🙂",
]


def _engine(folder, **kwargs):
    return Engine(EngineConfig(model=str(folder), task="sparse", **{"dtype": "float32", **kwargs}))


@pytest.fixture(scope="module", params=[{}, {"pooling_strategy": "sum", "activation_function": "log1p_relu"}],
                ids=["max-relu", "sum-log1p_relu"])
def splade(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("splade") / "model"
    return folder, make_tiny_splade(folder, pooling=request.param)


def _reference(encoder, texts):
    out = []
    for row in encoder.encode(texts, convert_to_tensor=True):
        row = row.coalesce()
        out.append((row.indices()[0].numpy(), row.values().numpy()))
    return out


def test_sparse_matches_sparse_encoder(splade):
    folder, encoder = splade
    want = _reference(encoder, TEXTS)
    engine = _engine(folder)
    got = engine.embed_sparse(TEXTS)
    worst = 0.0
    for (gi, gv), (wi, wv) in zip(got, want):
        assert gi.dtype == np.int32 and gv.dtype == np.float32
        np.testing.assert_array_equal(gi, wi)
        worst = max(worst, float(np.abs(gv - wv).max()))
    print(f"{engine.head.strategy}/{engine.head.activation}: {[len(i) for i, _ in got]} nonzero, "
          f"max abs diff {worst:.2e}")
    assert worst <= 1e-5
    assert all(0 < len(i) < 30522 // 4 for i, _ in got)  # really sparse, and not empty
    assert all(np.all(np.diff(i) > 0) for i, _ in got)    # sorted by index
    assert engine.dim == 30522


def test_top_k_keeps_the_largest_values(splade):
    engine = _engine(splade[0])
    full = engine.embed_sparse(TEXTS)
    top = engine.embed_sparse(TEXTS, top_k=10)
    for (fi, fv), (ti, tv) in zip(full, top):
        assert len(ti) == 10 and np.all(np.diff(ti) > 0)
        assert set(ti) <= set(fi)
        assert tv.min() >= np.sort(fv)[-10]
    with pytest.raises(ValueError, match="top_k"):
        engine.embed_sparse(TEXTS, top_k=0)


def test_top_k_ties_keep_the_lower_index():
    i, v = top_k_sparse(np.array([3, 5, 9, 12], np.int32), np.array([1.0, 2.0, 1.0, 1.0], np.float32), 2)
    assert i.tolist() == [3, 5] and v.tolist() == [1.0, 2.0]


def test_chunked_mlm_head_gives_the_same_vectors(splade):
    """The (T, V) logits are computed a few rows at a time; any chunk size gives the same."""
    engine = _engine(splade[0])
    whole = engine.embed_sparse(TEXTS)
    assert engine.head.chunk_tokens >= sum(1 for _ in TEXTS)  # one chunk per batch by default
    engine.head.chunk_tokens = 3                               # several chunks, across sequences
    chunked = engine.embed_sparse(TEXTS)
    for (a, av), (b, bv) in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
        # sum pooling adds the chunks' rows in another order: float32 rounding (~2e-7 relative)
        np.testing.assert_allclose(av, bv, atol=1e-6, rtol=1e-6)


def test_a_text_alone_equals_it_in_a_packed_batch(splade):
    engine = _engine(splade[0])
    batch = engine.embed_sparse(TEXTS)
    assert engine.stats.batches == 1
    for text, (bi, bv) in zip(TEXTS, batch):
        (ai, av), = engine.embed_sparse([text])
        np.testing.assert_array_equal(ai, bi)
        np.testing.assert_allclose(av, bv, atol=1e-6, rtol=0)


def test_both_execute_loops_give_the_same_vectors(splade):
    small = dict(max_num_batched_tokens=64, max_length=64)
    simple = _engine(splade[0], execute_loop="simple", **small).embed_sparse(TEXTS * 3)
    double_engine = _engine(splade[0], execute_loop="double_buffer", **small)
    double = double_engine.embed_sparse(TEXTS * 3)
    for (a, av), (b, bv) in zip(simple, double):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(av, bv)
    assert double_engine.stats.batches > 2


def test_bf16_stays_close(splade):
    want = _engine(splade[0]).embed_sparse(TEXTS[:1])[0]
    got = _engine(splade[0], dtype="bfloat16").embed_sparse(TEXTS[:1])[0]
    dense = np.zeros((2, 30522), np.float32)
    dense[0, want[0]], dense[1, got[0]] = want[1], got[1]
    cos = dense[0] @ dense[1] / np.linalg.norm(dense[0]) / np.linalg.norm(dense[1])
    print(f"bf16 sparse cosine {cos:.5f}")
    assert cos >= 0.99
