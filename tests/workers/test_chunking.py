"""truncation="chunk": long texts become overlapping windows whose vectors are folded back into
one. The reference is transformers' BertModel run on each window built independently from the
HF tokenizer, mean-pooled, normalized, then averaged by window tokens and normalized again."""
import numpy as np
import pytest
import torch

import workers.inputs.chunked_input as chunked_input
from workers import Engine, EngineConfig
from workers.loading.model_folder import default_model_path

LONG = " ".join(f"Sentence {i} says something about dense retrieval and vector indexes." for i in range(60))
SHORT = ["a short passage", "", "x", "another one about embeddings"]


@pytest.fixture(scope="module")
def chunked():
    return Engine(EngineConfig(dtype="float32", truncation="chunk"))


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModel, AutoTokenizer
    path = str(default_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _reference(hf, text, max_length=256, overlap=31, prompt="", skip_prompt=False):
    tok, model = hf
    content = tok(text, add_special_tokens=False)["input_ids"]
    head = [tok.cls_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    window = max_length - len(head) - 1
    vectors, weights, start = [], [], 0
    while True:
        body = content[start:start + window]
        ids = torch.tensor([[*head, *body, tok.sep_token_id]])
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0]
        pooled = hidden[len(head):] if skip_prompt else hidden
        vectors.append(torch.nn.functional.normalize(pooled.mean(0), dim=0).numpy())
        weights.append(len(body))
        if start + window >= len(content):
            break
        start += window - overlap
    mean = np.average(np.stack(vectors), axis=0, weights=weights)
    return mean / np.linalg.norm(mean), len(vectors)


def test_long_text_is_the_token_weighted_mean_of_its_windows(chunked, hf):
    want, n_windows = _reference(hf, LONG)
    assert n_windows >= 3
    before = chunked.stats.chunked
    got = chunked.embed(["before", LONG, "after"])
    assert chunked.stats.chunked - before == 1
    cos = float(got[1] @ want)
    assert cos >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    truncated = Engine(EngineConfig(dtype="float32")).embed([LONG])[0]
    assert float(truncated @ want) < 0.9999  # the windows past the first really count


def test_every_window_carries_the_prompt_and_skips_it_in_pooling(hf):
    engine = Engine(EngineConfig(dtype="float32", truncation="chunk", prompt="query: ",
                                 skip_instruction=True, chunk_overlap=16))
    want, n_windows = _reference(hf, LONG, overlap=16, prompt="query: ", skip_prompt=True)
    assert n_windows >= 3
    assert float(engine.embed([LONG])[0] @ want) >= 0.99999


def test_texts_that_fit_embed_exactly_as_in_truncate_mode(chunked):
    plain = Engine(EngineConfig(dtype="float32"))
    np.testing.assert_array_equal(chunked.embed(SHORT), plain.embed(SHORT))


@pytest.mark.parametrize("loop", ["simple", "double_buffer"])
def test_windows_spanning_batches_in_both_loops_and_streams(loop, chunked):
    # A 512-token budget holds two windows, so each long text spans several batches.
    small = Engine(EngineConfig(dtype="float32", truncation="chunk", max_num_batched_tokens=512,
                                execute_loop=loop))
    texts = [SHORT[0], LONG, SHORT[3], LONG[::-1], SHORT[2]]
    want = chunked.embed(texts)
    np.testing.assert_allclose(small.embed(texts), want, atol=1e-5)
    keys = [f"doc-{i}" for i in range(len(texts))]
    got = dict(small.embed_stream(zip(keys, texts)))
    assert sorted(got) == sorted(keys)
    np.testing.assert_allclose(np.stack([got[k] for k in keys]), want, atol=1e-5)


def test_sliced_tokenizing_gives_the_whole_text_tokens(monkeypatch, hf):
    monkeypatch.setattr(chunked_input, "_SLICE_CHARS", 64)  # slice a 4 kB text ~60 times
    engine = Engine(EngineConfig(dtype="float32", truncation="chunk", max_length=64, chunk_overlap=8))
    want = hf[0](LONG, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(engine.processor._content_ids(LONG), want)
    windows = engine.processor([LONG]).windows[0]
    step = (64 - 2) - 8
    assert windows[:-1] == [62] * (len(windows) - 1)
    assert (len(windows) - 1) * step + windows[-1] == len(want)


def test_huge_string_in_chunk_mode_is_embedded_whole(chunked):
    text = "retrieval " * 20000  # 200 kB, about 20k tokens: ~90 windows
    before = chunked.stats.tokens
    vec = chunked.embed([text])[0]
    assert chunked.stats.tokens - before > 20000
    assert abs(np.linalg.norm(vec) - 1) < 1e-5


def test_overlap_must_leave_a_window():
    with pytest.raises(ValueError, match="chunk_overlap=300 must be >= 0 and below the window of 254"):
        Engine(EngineConfig(dtype="float32", truncation="chunk", chunk_overlap=300))
    with pytest.raises(ValueError, match="chunk_overlap"):
        EngineConfig(chunk_overlap=-1)


def test_fingerprint_records_chunk_mode(chunked):
    fp = chunked.fingerprint()
    assert (fp["truncation"], fp["chunk_overlap"]) == ("chunk", 254 // 8)
