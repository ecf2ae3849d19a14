"""The sample corpus: real prose, deterministic, distinct and bounded in length."""
from pipeline.inputs.samples import sample_passages


def test_passages_are_deterministic_distinct_and_bounded():
    a = sample_passages(200, seed=3, max_chars=500)
    assert a == sample_passages(200, seed=3, max_chars=500)
    assert a != sample_passages(200, seed=4, max_chars=500)
    assert len(set(a)) == 200
    assert all(20 <= len(p) <= 500 for p in a)
    assert sum(" the " in p for p in a) > 100  # English prose, not code

