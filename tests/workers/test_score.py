"""task="score" with cross-encoders (BERT, RoBERTa, XLM-R `*ForSequenceClassification`) against
sentence-transformers' CrossEncoder.predict on the same tiny random-weight folders."""
import json

import numpy as np
import pytest
import torch

from tiny_models import make_tiny_model, make_tiny_classifier
from workers import Engine, EngineConfig

ARCHS = ["BertForSequenceClassification", "RobertaForSequenceClassification",
         "XLMRobertaForSequenceClassification"]
MAX_LEN = 48
PAIRS = [
    ("what is a vector index", "a vector index stores embeddings so that dense retrieval finds passages"),
    ("the quick brown fox", ""),
    ("rerankers sort documents", "the lazy dog sleeps near the river bank all day"),
    ("a", "cross encoder " * 200),                                   # document far over max_length
    ("query words " * 100, "passage words " * 150),                  # both sides over max_length
    ("query words " * 40, "short passage"),                          # the query is the long side
    ("Ünïcödé 日本語 🙂", "embeddings map text to vectors"),
]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_tiny_classifier(folder, request.param)
    return folder


def _cross_encoder(folder, **kwargs):
    from sentence_transformers import CrossEncoder
    return CrossEncoder(str(folder), max_length=MAX_LEN, device="cpu", **kwargs)


def _engine(folder, **kwargs):
    return Engine(EngineConfig(model=str(folder), task="score", max_length=MAX_LEN,
                               **{"dtype": "float32", **kwargs}))


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_scores_match_cross_encoder_predict(tiny, dtype, tol):
    want = _cross_encoder(tiny).predict(PAIRS)
    engine = _engine(tiny, dtype=dtype)
    got = engine.score(PAIRS)
    diff = float(np.abs(got - want).max())
    print(f"{engine.folder.architecture} {dtype}: max abs diff {diff:.2e}")
    assert got.dtype == np.float32 and got.shape == (len(PAIRS),)
    assert diff <= tol, (got, want)
    assert np.ptp(want) > 0.05  # the scores really differ, so the comparison can fail
    assert engine.stats.truncated == 3 and engine.resolved.activation == "sigmoid"


def test_pair_alone_equals_pair_in_a_packed_batch(tiny):
    engine = _engine(tiny)
    batch = engine.score(PAIRS)
    assert engine.stats.batches == 1
    alone = np.array([engine.score([p])[0] for p in PAIRS])
    np.testing.assert_allclose(alone, batch, atol=1e-6, rtol=0)


def test_both_execute_loops_give_the_same_scores(tiny):
    small = dict(max_num_batched_tokens=MAX_LEN * 2)  # several batches
    simple = _engine(tiny, execute_loop="simple", **small)
    double = _engine(tiny, execute_loop="double_buffer", **small)
    np.testing.assert_array_equal(simple.score(PAIRS), double.score(PAIRS))
    assert double.stats.batches > 2


def test_rerank_is_score_sorted_best_first(tiny):
    engine = _engine(tiny)
    docs = [d for _, d in PAIRS] + [PAIRS[0][1]]            # a duplicate: tie broken by index
    scores = engine.score([("what is a vector index", d) for d in docs])
    ranked = engine.rerank("what is a vector index", docs)
    assert [i for i, _ in ranked] == sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    assert [s for _, s in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True))
    dup = [i for i, _ in ranked if docs[i] == PAIRS[0][1]]
    assert dup == [0, len(docs) - 1]
    assert engine.rerank("what is a vector index", docs, top_k=2) == ranked[:2]
    assert engine.rerank("q", []) == []


def test_activation_saved_by_cross_encoder_is_honoured(tmp_path):
    """A folder CrossEncoder.save wrote (modules.json + config_sentence_transformers.json)."""
    make_tiny_classifier(tmp_path / "hf", "BertForSequenceClassification", seed=1)
    _cross_encoder(tmp_path / "hf", activation_fn=torch.nn.Identity()).save(str(tmp_path / "ce"))
    folder = tmp_path / "ce"
    want = _cross_encoder(folder).predict(PAIRS)
    engine = _engine(folder)
    assert engine.resolved.activation == "identity"
    np.testing.assert_allclose(engine.score(PAIRS), want, atol=1e-5, rtol=0)
    assert (want < 0).any() or (want > 1).any()  # really logits, not probabilities
    forced = _engine(folder, activation="sigmoid")
    want = _cross_encoder(folder).predict(PAIRS, activation_fn=torch.nn.Sigmoid())
    np.testing.assert_allclose(forced.score(PAIRS), want, atol=1e-5, rtol=0)
    assert forced.fingerprint()["activation"] == "sigmoid"


@pytest.mark.parametrize("where,honoured", [("config.json", True), ("st_json_without_modules", False)])
def test_activation_in_config_json_and_a_bare_st_json(tmp_path, where, honoured):
    """config.json's `sentence_transformers.activation_fn` counts; config_sentence_transformers.json
    without modules.json is not read by CrossEncoder, so not by us either."""
    folder = tmp_path / "ce"
    make_tiny_classifier(folder, "BertForSequenceClassification", seed=2)
    identity = "torch.nn.modules.linear.Identity"
    if where == "config.json":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "sentence_transformers": {"activation_fn": identity}}))
    else:
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"activation_fn": identity}))
    engine = _engine(folder)
    assert engine.resolved.activation == ("identity" if honoured else "sigmoid")
    np.testing.assert_allclose(engine.score(PAIRS), _cross_encoder(folder).predict(PAIRS), atol=1e-5, rtol=0)


def test_bert_token_type_ids_reach_the_embeddings(tmp_path):
    """The second segment's type id changes the score (the packed batch carries real type ids)."""
    folder = tmp_path / "ce"
    make_tiny_classifier(folder, "BertForSequenceClassification")
    engine = _engine(folder)
    tok = engine.processor(PAIRS[:1])
    assert set(tok.type_ids[0].tolist()) == {0, 1}
    ours = engine.score(PAIRS[:1])[0]
    engine.builder.token_types = False  # every token type 0, as before pairs existed
    assert abs(engine.score(PAIRS[:1])[0] - ours) > 1e-4


_HUGE_PAIRS = '''
import json, sys
from workers import Engine, EngineConfig
a = "data index text " * 37_500                  # 600,000 characters, 112,500 tokens
b = "retrieval passage document " * 22_223        # 600,021 characters, 66,669 tokens
engine = Engine(EngineConfig(model=sys.argv[1], task="score", max_length=48, dtype="float32"))
engine.score([("warm", "up")])
def status(key):  # KiB, from /proc/self/status
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the RSS now
before = status("VmRSS")
scores = engine.score([(a, b), (b, a)]).tolist()
grown = (status("VmHWM") - before) * 1024  # the call's own peak over the RSS before it
print(json.dumps({"scores": scores, "grown": grown, "truncated": engine.stats.truncated}))
'''


@pytest.mark.slow
def test_a_600k_character_pair_scores_in_bounded_memory(tmp_path):
    """Issue 24: a (600k, 600k)-character pair once took tens of GB (the tokenizer's pair
    overflow); now its peak memory is bounded and its score is CrossEncoder's on the truncated
    pair (prefixes that keep the same side longer: longest_first keeps only the first tokens)."""
    import subprocess
    import sys
    folder = tmp_path / "bert"
    make_tiny_classifier(folder, "BertForSequenceClassification")
    done = subprocess.run([sys.executable, "-c", _HUGE_PAIRS, str(folder)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"peak RSS rose {got['grown'] / 2**20:.0f} MiB over the RSS before the call")
    assert got["grown"] < 2 * 2**30 and got["truncated"] == 2
    a, b = "data index text " * 200, "retrieval passage document " * 100  # 600 and 300 tokens
    want = _cross_encoder(folder).predict([(a, b), (b, a)])
    np.testing.assert_allclose(got["scores"], want, atol=1e-5, rtol=0)
    assert abs(want[0] - want[1]) > 1e-3  # the two orders differ, so the comparison can fail


def test_fingerprint_and_wrong_method(tiny):
    engine = _engine(tiny)
    fp = engine.fingerprint()
    assert (fp["task"], fp["workflow"], fp["dimensions"]) == ("score", "cross_encoder", 1)
    with pytest.raises(TypeError, match=r"embed\(\) needs an engine started with task='embed'.*score\(\)"):
        engine.embed(["text"])
    with pytest.raises(TypeError, match="index 1 is a tuple of \\(str, int\\)"):
        engine.score([("a", "b"), ("a", 3)])
    with pytest.raises(TypeError, match="list of"):
        engine.score(("a", "b"))


def test_error_truncation_names_the_pair(tiny):
    engine = _engine(tiny, truncation="error")
    with pytest.raises(ValueError, match="pair at index 3 is longer than max_length=48"):
        engine.score(PAIRS)


@pytest.mark.parametrize("kwargs,match", [
    ({"truncation": "chunk"}, "truncation='chunk'"),
    ({"pooling": "mean"}, "pooling='mean' shapes embeddings only"),
    ({"activation": "relu"}, "activation='relu' is not supported"),
    ({"prompt": "query: "}, "no place in a cross-encoder"),
])
def test_options_that_do_not_apply_are_refused(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _engine(tiny, **kwargs)


def test_unsupported_architecture_and_task_names_both(tmp_path):
    make_tiny_model(tmp_path, "BertModel")  # a plain transformers folder: the architecture decides
    with pytest.raises(ValueError, match=r"'BertModel' with task='score' is not supported.*"
                                         r"BertForSequenceClassification/score.*Qwen3ForCausalLM/score"):
        Engine(EngineConfig(model=str(tmp_path), task="score"))
    # A sentence-transformers folder says what it is: the bundled MiniLM is a SentenceTransformer.
    with pytest.raises(ValueError, match=r"SentenceTransformer folder, which serves task 'embed'.*"
                                         r"not task='score'"):
        Engine(EngineConfig(task="score"))
