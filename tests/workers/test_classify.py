"""task="classify": sequence-classification logits against transformers'
AutoModelForSequenceClassification on the same tiny random-weight folders."""
import numpy as np
import pytest
import torch

from tiny_models import ROBERTA_CORPUS, make_tiny_classifier
from workers import Engine, EngineConfig

LABELS = ["negative", "neutral", "positive"]
TEXTS = ROBERTA_CORPUS + ["", "the quick brown fox " * 60]  # an empty text and one over max_length
MAX_LEN = 64


@pytest.fixture(scope="module", params=["BertForSequenceClassification", "XLMRobertaForSequenceClassification"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, make_tiny_classifier(folder, request.param, num_labels=3, labels=LABELS)


def _engine(folder, **kwargs):
    return Engine(EngineConfig(model=str(folder), task="classify", max_length=MAX_LEN,
                               **{"dtype": "float32", **kwargs}))


def _reference(folder, hf_model):
    """transformers, one text at a time, tokenized by its own tokenizer at MAX_LEN."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    out = []
    for text in TEXTS:
        enc = tok(text, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        with torch.no_grad():
            out.append(hf_model(**enc).logits[0])
    return torch.stack(out).numpy()


def test_logits_match_transformers(tiny):
    folder, hf_model = tiny
    engine = _engine(folder)
    got, want = engine.classify(TEXTS), _reference(folder, hf_model)
    diff = float(np.abs(got - want).max())
    print(f"{engine.folder.architecture} classify float32: max abs diff {diff:.2e}")
    assert got.shape == (len(TEXTS), 3) and got.dtype == np.float32
    assert diff <= 1e-5, (got[:2], want[:2])
    assert np.ptp(want, axis=0).min() > 0.05  # logits differ across texts: the test can fail
    assert engine.labels == LABELS and engine.stats.truncated == 1


def test_bfloat16_close(tiny):
    folder, hf_model = tiny
    diff = float(np.abs(_engine(folder, dtype="bfloat16").classify(TEXTS) - _reference(folder, hf_model)).max())
    print(f"classify bfloat16: max abs diff {diff:.2e}")
    assert diff <= 5e-2


def test_softmax_activation_gives_probabilities(tiny):
    folder, hf_model = tiny
    probs = _engine(folder, activation="softmax").classify(TEXTS)
    want = torch.softmax(torch.from_numpy(_reference(folder, hf_model)), -1).numpy()
    np.testing.assert_allclose(probs, want, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_text_alone_equals_text_in_a_packed_batch(tiny):
    engine = _engine(tiny[0])
    batch = engine.classify(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(engine.classify([text])[0], batch[i], atol=1e-5)


def test_labels_default_and_wrong_calls(tmp_path):
    make_tiny_classifier(tmp_path, "BertForSequenceClassification", num_labels=2)
    engine = _engine(tmp_path)
    assert engine.labels == ["LABEL_0", "LABEL_1"]
    assert engine.classify([]).shape == (0, 2)
    assert engine.fingerprint()["task"] == "classify" and engine.fingerprint()["activation"] == "identity"
    with pytest.raises(TypeError, match=r"score\(\) needs an engine started with task='score'.*classify\(\)"):
        engine.score([("a", "b")])
    with pytest.raises(TypeError, match="list of strings"):
        engine.classify("one text")
    with pytest.raises(ValueError, match="2 labels, but task='score'"):
        Engine(EngineConfig(model=str(tmp_path), task="score"))
