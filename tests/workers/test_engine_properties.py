"""Property-based checks of the engine's contract over arbitrary unicode: it never raises on a
string, returns one vector per input, in input order (each row equals the text embedded alone),
in all three truncation modes; and odd-but-valid text matches sentence-transformers."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers import Engine, EngineConfig
from workers.loading.model_folder import default_model_path

# Small max_length so that generated text often overflows it and chunk mode splits it.
ENGINES = {mode: Engine(EngineConfig(dtype="float32", max_length=24, truncation=mode))
           for mode in ("truncate", "chunk")}
texts_strategy = st.lists(st.text(max_size=300), min_size=1, max_size=6)
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mode", sorted(ENGINES))
@PROPERTY
@given(texts=texts_strategy)
def test_any_strings_embed_one_row_each_in_order(mode, texts):
    engine = ENGINES[mode]
    out = engine.embed(texts)
    assert out.shape == (len(texts), engine.dim)
    assert np.isfinite(out).all()
    for i in {0, len(texts) - 1}:
        alone = engine.embed([texts[i]])[0]
        assert float(out[i] @ alone) >= 0.9999, (i, texts[i])


@PROPERTY
@given(texts=texts_strategy)
def test_error_mode_raises_only_for_overlong_texts(texts):
    strict = STRICT
    lengths = [len(ids) for ids in ENGINES["truncate"].processor(texts).ids]
    over = [i for i, t in enumerate(texts) if len(STRICT_WHOLE.encode(t).ids) > 24]
    if over:
        with pytest.raises(ValueError, match=f"text at index {over[0]} is longer than max_length=24"):
            strict.embed(texts)
    else:
        assert strict.embed(texts).shape == (len(texts), strict.dim)
        assert max(lengths) <= 24


STRICT = Engine(EngineConfig(dtype="float32", max_length=24, truncation="error"))
STRICT_WHOLE = STRICT.processor._tok.__class__.from_str(STRICT.processor._tok.to_str())
STRICT_WHOLE.no_truncation()

ODD = [
    "\x00", "a\x00b", "\x1b[31mred\x1b[0m", "\u200b\u200c\u200d", "\ufeffBOM first",
    "👍🏽", "👨\u200d👩\u200d👧 family", "🙂" * 80, "ﷺ", "مرحبا بالعالم", "\u202eoverride\u202c",
    "\u0301", "e\u0301\u0302\u0303", "中文 日本語 한국어", "Z̸̢̛a̵̡l̷g̶o̴", "  ", "\t", "\n",
    "a", "字", "\U0001f600", "mixed العربية and English", "ﬁ ligature ﬀ", "\u00a0nbsp",
]


@pytest.mark.slow
def test_odd_text_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    want = SentenceTransformer(str(default_model_path()), device="cpu").encode(ODD)
    got = Engine(EngineConfig(dtype="float32")).embed(ODD)
    cos = (got * want).sum(1)
    assert cos.min() >= 0.99999, dict(zip(ODD, cos.round(6)))
