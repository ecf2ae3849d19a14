"""task="tokens": last hidden states of a plain folder vs transformers' `last_hidden_state`, and a
multi-vector folder vs sentence-transformers' MultiVectorEncoder (encode_query / encode_document)
on tiny random folders saved by sentence-transformers itself."""
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from tiny_models import make_tiny_model, make_tiny_multi_vector
from workers import Engine, EngineConfig

TEXTS = [
    "what is late interaction, and why does it work?",
    "",
    "a passage (with punctuation!) that is long enough to be cut at the document length " * 3,
    "x",
    "Ünïcödé 日本語 🙂 tokens",
]
EXPANSIONS = {
    "none": None,
    "fixed-attend": {"strategy": "fixed", "length": 16, "attend": True},
    "fixed-query-only": {"strategy": "fixed", "length": 16, "attend": False},
    "min": {"strategy": "min", "length": 14},
}


def _engine(folder, **kwargs):
    return Engine(EngineConfig(model=str(folder), task="tokens", **{"dtype": "float32", **kwargs}))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    return folder, make_tiny_model(folder, "BertModel")


@pytest.fixture(scope="module", params=list(EXPANSIONS))
def multi_vector(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"mve-{request.param}") / "model"
    return folder, make_tiny_multi_vector(folder, EXPANSIONS[request.param], bias=request.param == "min")


def test_plain_tokens_are_last_hidden_state(plain):
    folder, model = plain
    engine = _engine(folder, max_length=24)
    got = engine.embed_tokens(TEXTS)
    tok = AutoTokenizer.from_pretrained(str(folder))
    worst = 0.0
    for text, g in zip(TEXTS, got):
        enc = tok(text, return_tensors="pt", truncation=True, max_length=24)
        with torch.no_grad():
            want = model(**enc).last_hidden_state[0].numpy()
        assert g.dtype == np.float32 and g.shape == want.shape, (text, g.shape, want.shape)
        worst = max(worst, float(np.abs(g - want).max()))
    print(f"plain tokens fp32: max abs diff {worst:.2e}")
    assert worst <= 1e-5
    assert engine.dim == 32 and engine.stats.truncated == 1
    assert float(np.abs(got[0]).max()) > 0.5  # unnormalized states, not unit vectors


def test_plain_folder_has_no_query_side(plain):
    with pytest.raises(ValueError, match="is_query=True applies to a multi-vector folder"):
        _engine(plain[0]).embed_tokens(["a"], is_query=True)


def test_a_text_alone_equals_it_in_a_packed_batch(plain):
    engine = _engine(plain[0])
    batch = engine.embed_tokens(TEXTS)
    assert engine.stats.batches == 1
    for text, b in zip(TEXTS, batch):
        np.testing.assert_allclose(engine.embed_tokens([text])[0], b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("is_query", [False, True])
def test_multi_vector_matches_multi_vector_encoder(multi_vector, is_query):
    folder, st = multi_vector
    want = (st.encode_query if is_query else st.encode_document)(TEXTS, convert_to_numpy=True)
    engine = _engine(folder)
    got = engine.embed_tokens(TEXTS, is_query=is_query)
    assert [g.shape for g in got] == [w.shape for w in want]
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    print(f"{folder.parent.name} is_query={is_query}: max abs diff {worst:.2e}")
    assert worst <= 1e-5
    assert engine.dim == 24
    np.testing.assert_allclose(np.linalg.norm(got[0], axis=1), 1.0, atol=1e-5)


def test_document_skiplist_and_query_side_differ(tmp_path):
    """The markers differ per side and documents drop punctuation: the same text gives
    different token counts, as MultiVectorEncoder does (so the side really is switched)."""
    folder = tmp_path / "model"
    st = make_tiny_multi_vector(folder, None)
    engine = _engine(folder)
    text = ["hello , world ! ! !"]
    doc, query = engine.embed_tokens(text)[0], engine.embed_tokens(text, is_query=True)[0]
    # "query: " and "passage: " are 2 tokens each; a document drops its 4 punctuation tokens and
    # the marker's ":"
    assert len(query) - len(doc) == 5
    assert len(doc) == len(st.encode_document(text)[0])


def test_query_expansion_pads_attend_or_not(tmp_path):
    """attend=false pads are query-only: the real tokens' vectors equal those of the query
    without expansion; attend=true pads change them."""
    out = {}
    for name in ("none", "fixed-attend", "fixed-query-only"):
        folder = tmp_path / name / "model"
        make_tiny_multi_vector(folder, EXPANSIONS[name])
        out[name] = _engine(folder).embed_tokens(["short query"], is_query=True)[0]
    n = len(out["none"])
    assert len(out["fixed-attend"]) == len(out["fixed-query-only"]) == 16 > n
    np.testing.assert_allclose(out["fixed-query-only"][:n], out["none"], atol=1e-5)
    assert float(np.abs(out["fixed-attend"][:n] - out["none"]).max()) > 1e-3


def test_both_execute_loops_give_the_same_tokens(multi_vector):
    folder, _ = multi_vector
    small = dict(max_num_batched_tokens=32, max_length=32)  # several batches
    simple = _engine(folder, execute_loop="simple", **small)
    double = _engine(folder, execute_loop="double_buffer", **small)
    for is_query in (False, True):
        a, b = simple.embed_tokens(TEXTS * 3, is_query), double.embed_tokens(TEXTS * 3, is_query)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert double.stats.batches > 4


def test_tokens_engine_refuses_other_calls(plain):
    engine = _engine(plain[0])
    with pytest.raises(TypeError, match="embed_tokens"):
        engine.embed(["a"])
    with pytest.raises(TypeError, match="list of strings"):
        engine.embed_tokens("a")


def test_a_multi_vector_folder_picks_the_tokens_task(tmp_path):
    """No task given: the folder's kind (MultiVectorEncoder) decides; embed is refused by name."""
    make_tiny_multi_vector(tmp_path / "m", None, bias=False)
    engine = Engine(EngineConfig(model=str(tmp_path / "m"), dtype="float32"))
    assert engine.config.task == "tokens" and engine.dim == 24
    with pytest.raises(ValueError, match="MultiVectorEncoder folder, which serves task 'tokens', not task='embed'"):
        Engine(EngineConfig(model=str(tmp_path / "m"), task="embed"))
