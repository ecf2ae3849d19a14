"""task="chunks": late chunking against a plain-transformers reference (AutoModel's
last_hidden_state of the whole document, the mean over each chunk's tokens, then the folder's
Dense/Normalize modules), macro windows on documents 3x the maximum length, spans that cover
the text, and split chunking against `Engine.embed` of each chunk's text."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_decoders import make_tiny_decoder
from tests.tiny_models import make_tiny_model, write_embeddinggemma_st_files
from workers import Engine, EngineConfig
from workers.inputs import chunk_spans
from workers.loading.model_folder import default_model_path

MAX_LENGTH = 64  # small, so a document 3x the maximum length stays cheap
WORDS = ("Berlin is the capital of Germany and its largest city; its population is about "
         "3.6 million, and it lies on the Spree. The city hosts universities, museums, an "
         "orchestra and many startups, and unbelievably long compound words appear too.")
DOC = WORDS[:160]                                        # fits in one window of 64 tokens
LONG = " ".join(f"Paragraph {i}: {WORDS}" for i in range(5))  # > 3 x 64 tokens


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineConfig(task="chunks", dtype="float32", max_length=MAX_LENGTH))


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModel, AutoTokenizer
    path = str(default_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _content(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], np.array([s for s, _ in enc["offset_mapping"]])


_STATES: dict = {}  # (model, window ids) -> states: the macro test reuses its windows


def _states(model, tok, ids):
    key = (id(model), tuple(ids))
    if key not in _STATES:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[tok.cls_token_id, *ids, tok.sep_token_id]]))
        _STATES[key] = out.last_hidden_state[0, 1:-1]      # content tokens only
    return _STATES[key]


def _reference(hf, text, spans, max_length=MAX_LENGTH, post=None, normalize=True):
    """Per span, post(mean of the token states of the tokens starting inside it); documents
    over max_length: each token's state from the window giving it the most context."""
    tok, model = hf
    ids, starts = _content(tok, text)
    window = max_length - 2
    if len(ids) <= window:
        states = _states(model, tok, ids)
    else:
        windows, _ = chunk_spans.macro_windows(len(ids), window)
        assert windows[0] == 0 and windows[-1] + window == len(ids)
        t = np.arange(len(ids))[:, None]
        context = np.minimum(t - windows[None], windows[None] + window - 1 - t)
        context[(t < windows[None]) | (t >= windows[None] + window)] = -1
        best = context.argmax(1)                          # ties: the earlier window
        runs = [_states(model, tok, ids[s:s + window]) for s in windows.tolist()]
        states = torch.stack([runs[w][i - windows[w]] for i, w in enumerate(best.tolist())])
    means = []
    for s, e in spans:
        rows = np.flatnonzero((starts >= s) & (starts < e))
        means.append(states[rows].mean(0))
    out = torch.stack(means)
    out = post(out) if post else out
    return (torch.nn.functional.normalize(out, dim=-1) if normalize else out).numpy()


def test_late_chunks_equal_the_transformers_reference_in_fp32(engine, hf):
    chunks = engine.embed_chunks([DOC], chunk_tokens=8)[0]
    assert len(chunks) >= 4
    spans = [(s, e) for s, e, _ in chunks]
    got = np.stack([v for _, _, v in chunks])
    np.testing.assert_allclose(got, _reference(hf, DOC, spans), atol=1e-5, rtol=0)
    # the caller's spans (any character offsets), overlapping chunks, in a batch with others
    mine = [(0, 40), (30, 95), (95, len(DOC))]
    out = engine.embed_chunks(["another text", DOC], spans=[[(0, 7)], mine])
    assert [(s, e) for s, e, _ in out[1]] == mine
    np.testing.assert_allclose(np.stack([v for *_, v in out[1]]), _reference(hf, DOC, mine),
                               atol=1e-5, rtol=0)


def test_macro_windows_on_documents_three_times_the_maximum_length(engine, hf):
    tok, _ = hf
    n = len(_content(tok, LONG)[0])
    assert n >= 3 * MAX_LENGTH
    for overlap in (0, 5):
        chunks = engine.embed_chunks([LONG], chunk_tokens=24, chunk_overlap=overlap)[0]
        spans = [(s, e) for s, e, _ in chunks]
        got = np.stack([v for *_, v in chunks])
        np.testing.assert_allclose(got, _reference(hf, LONG, spans), atol=1e-5, rtol=0)
    # a chunk longer than a window pools tokens owned by several windows
    whole = engine.embed_chunks([LONG], spans=[[(0, len(LONG))]])[0]
    np.testing.assert_allclose(whole[0][2], _reference(hf, LONG, [(0, len(LONG))])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("n,window", [(1, 8), (8, 8), (9, 8), (30, 8), (31, 7), (200, 62), (1000, 10)])
def test_each_token_is_owned_by_the_window_with_the_most_context(n, window):
    starts, owned = chunk_spans.macro_windows(n, window)
    assert starts[0] == 0 and min(n, starts[-1] + window) == n and (np.diff(starts) > 0).all()
    assert (np.diff(starts) <= window // 2 + 1).all()    # windows overlap by about half
    t = np.arange(n)[:, None]
    context = np.minimum(t - starts[None], starts[None] + window - 1 - t)
    context[(t < starts[None]) | (t >= starts[None] + window)] = -1
    owner = np.repeat(np.arange(len(starts)), np.diff(owned))
    np.testing.assert_array_equal(owner, context.argmax(1))


def test_spans_cover_the_text_with_no_gap(engine, hf):
    tok, _ = hf
    texts = [DOC, LONG, "one", "  padded   text  with   spaces  ", "tokenization" * 30]
    for overlap in (0, 3):
        for text, chunks in zip(texts, engine.embed_chunks(texts, chunk_tokens=10, chunk_overlap=overlap)):
            spans = np.array([(s, e) for s, e, _ in chunks])
            assert spans[0, 0] == 0 and spans[-1, 1] == len(text)
            assert (spans[:, 0] < spans[:, 1]).all()
            if overlap == 0:
                np.testing.assert_array_equal(spans[1:, 0], spans[:-1, 1])   # adjacent: no gap
            else:
                assert (spans[1:, 0] < spans[:-1, 1]).all()                   # overlapping
            assert (np.diff(spans[:, 0]) > 0).all()
            _, starts = _content(tok, text)
            held = [int(((starts >= s) & (starts < e)).sum()) for s, e in spans]
            assert max(held) <= 10 and min(held) >= 1
    # a cut inside a word moves back to the word's start
    text = "tokenization unbelievable " * 10   # 3 tokens: token ##ization unbelievable
    pieces = [text[s:e] for s, e, _ in engine.embed_chunks([text], chunk_tokens=4)[0]]
    assert pieces[:2] == ["tokenization unbelievable ", "tokenization unbelievable "]


def test_split_chunks_equal_embed_of_each_chunk_text(engine):
    embedder = Engine(EngineConfig(dtype="float32", max_length=MAX_LENGTH))
    texts = [DOC, LONG, "a short one"]
    late = engine.embed_chunks(texts, chunk_tokens=16)
    split = engine.embed_chunks(texts, chunk_tokens=16, chunking="split")
    for text, a, b in zip(texts, late, split):
        assert [(s, e) for s, e, _ in a] == [(s, e) for s, e, _ in b]   # the same spans
        want = embedder.embed([text[s:e] for s, e, _ in b])
        np.testing.assert_allclose(np.stack([v for *_, v in b]), want, atol=1e-6, rtol=0)
    assert not np.allclose(late[1][3][2], split[1][3][2], atol=1e-3)   # context changes a chunk


def test_bad_spans_and_options_are_refused_naming_them(engine):
    with pytest.raises(ValueError, match=r"span 1 \(5, 99\) of text 0 is not within"):
        engine.embed_chunks(["short text"], spans=[[(0, 5), (5, 99)]])
    with pytest.raises(ValueError, match="span 0 .* of text 0 holds no token"):
        engine.embed_chunks(["a      b"], spans=[[(2, 5)]])
    with pytest.raises(ValueError, match="text 1 has no spans"):
        engine.embed_chunks(["a", "b"], spans=[[(0, 1)], []])
    with pytest.raises(ValueError, match="chunk_overlap=8 must be .* below chunk_tokens=8"):
        engine.embed_chunks(["a"], chunk_tokens=8, chunk_overlap=8)
    with pytest.raises(ValueError, match="chunking='naive' is not supported"):
        engine.embed_chunks(["a"], chunking="naive")
    with pytest.raises(TypeError, match="needs an engine started with task='chunks'"):
        Engine(EngineConfig(max_length=16)).embed_chunks(["a"])
    with pytest.raises(ValueError, match="task='chunks'"):
        EngineConfig(task="embed", chunking="late")
    assert EngineConfig(chunking="split").task == "chunks"
    assert engine.fingerprint()["chunking"] == "late" and engine.fingerprint()["workflow"] == "late_chunk"


def test_late_chunks_run_the_folders_dense_modules(tmp_path, hf):
    """A folder with Dense modules after mean pooling (EmbeddingGemma's layout) on a tiny BERT:
    span mean -> 2_Dense -> 3_Dense -> normalize."""
    model = make_tiny_model(tmp_path, "BertModel")
    write_embeddinggemma_st_files(tmp_path, hidden=32, inner=48, max_len=32)
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({}))
    dense = [load_file(str(tmp_path / d / "model.safetensors"))["linear.weight"] for d in ("2_Dense", "3_Dense")]
    tiny = Engine(EngineConfig(model=str(tmp_path), task="chunks", dtype="float32"))
    assert tiny.dim == 32
    chunks = tiny.embed_chunks([LONG[:300]], chunk_tokens=12)[0]
    spans = [(s, e) for s, e, _ in chunks]
    want = _reference((hf[0], model), LONG[:300], spans, max_length=32,
                      post=lambda x: x @ dense[0].T @ dense[1].T)
    np.testing.assert_allclose(np.stack([v for *_, v in chunks]), want, atol=1e-5, rtol=0)


def test_late_chunks_of_a_causal_decoder_in_macro_windows(tmp_path, hf):
    """A tiny random Qwen3 (causal, last-token pooled, no Normalize): the span mean of its
    causal hidden states, each token from its best macro window."""
    model = make_tiny_decoder(tmp_path, "Qwen3Model")
    tiny = Engine(EngineConfig(model=str(tmp_path), task="chunks", dtype="float32", max_length=32))
    assert tiny.workflow.name == "decoder_late_chunk" and tiny.workflow.causal
    chunks = tiny.embed_chunks([LONG[:400]], chunk_tokens=10)[0]
    spans = [(s, e) for s, e, _ in chunks]
    want = _reference((hf[0], model), LONG[:400], spans, max_length=32, normalize=False)
    np.testing.assert_allclose(np.stack([v for *_, v in chunks]), want, atol=1e-5, rtol=0)
