"""Pipeline config validation and the shard plan (no Ray, no engine)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import PipelineConfig
from pipeline.inputs.shards import MAX_SHARD_ROWS, MIN_SHARD_ROWS, default_shard_rows, plan_shards
from pipeline.inputs.sources import Fragment


@pytest.mark.parametrize("kwargs, needle", [
    ({"text_column": ""}, "text_column"),
    ({"num_workers": 0}, "num_workers"),
    ({"shard_rows": -5}, "shard_rows"),
    ({"threads_per_worker": 1.5}, "threads_per_worker"),
    ({"output_format": "csv"}, "['parquet', 'arrow']"),
    ({"output_dtype": "bfloat16"}, "['float32', 'float16', 'int8', 'ubinary']"),
    ({"max_retries": -1}, "max_retries"),
    ({"passthrough_columns": "title"}, "tuple"),
    ({"passthrough_columns": ("embedding",)}, "clash"),
])
def test_config_rejects_bad_values_naming_them(kwargs, needle):
    with pytest.raises(ValueError, match=None) as info:
        PipelineConfig(**kwargs)
    assert needle in str(info.value)


def test_config_input_columns_unique_in_order():
    cfg = PipelineConfig(text_column="t", id_column="doc", passthrough_columns=["doc", "title"])
    assert cfg.passthrough_columns == ("doc", "title")
    assert cfg.input_columns == ["t", "doc", "title"]


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 50), min_size=0, max_size=12), shard_rows=st.integers(1, 40))
def test_plan_covers_every_row_once_in_order(counts, shard_rows):
    fragments = [Fragment(f"f{i}", n) for i, n in enumerate(counts)]
    shards = plan_shards(fragments, shard_rows)
    seen = []
    for k, shard in enumerate(shards):
        assert shard.index == k and shard.id == f"{k:06d}"
        assert shard.num_rows == (shard_rows if k < len(shards) - 1 else shard.num_rows) > 0
        assert shard.num_rows <= shard_rows
        assert shard.row_offset == len(seen)
        assert sum(p.stop - p.start for p in shard.pieces) == shard.num_rows
        for p in shard.pieces:
            assert 0 <= p.start < p.stop <= counts[p.fragment]
            seen.extend((p.fragment, r) for r in range(p.start, p.stop))
    assert seen == [(f, r) for f, n in enumerate(counts) for r in range(n)]


def test_plan_is_deterministic():
    fragments = [Fragment("a", 1000), Fragment("b", 17)]
    assert plan_shards(fragments, 300) == plan_shards(list(fragments), 300)


def test_default_shard_rows_clamped():
    assert default_shard_rows(10, 1) == MIN_SHARD_ROWS
    assert default_shard_rows(10**9, 4) == MAX_SHARD_ROWS
    assert default_shard_rows(80_000, 2) == 5_000
