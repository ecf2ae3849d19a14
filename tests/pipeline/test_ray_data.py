"""`pipeline.Embedder` in a Ray Data pipeline (issue 15 item 7): `map_batches` with an actor pool
appends an `embedding` column equal to the engine's vectors, which are `pipeline.run`'s
(tests/pipeline/test_pipeline_run.py::test_list_in_memory_equals_engine); blank texts get a null
embedding, where `pipeline.run` gives NaN rows. Actors take half a CPU each, so Ray Data's read tasks still get one (docs/DESIGN.md: Ray Data deadlocks otherwise)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import pipeline
from pipeline.inputs.samples import sample_passages

KEEP_WARM = False  # Ray Data needs the CPUs warm actors would hold (tests/conftest.py)

N = 40


@pytest.mark.slow
def test_map_batches_appends_the_engines_vectors(ray_local):
    import ray
    texts = sample_passages(N, seed=5, max_chars=200)
    texts[7], texts[20] = "", None
    from workers import Engine, EngineConfig
    good = [i for i in range(N) if i not in (7, 20)]
    want = Engine(EngineConfig(dtype="float32", num_threads=1)).embed([texts[i] for i in good])
    ds = ray.data.from_arrow(pa.table({"row": list(range(N)), "text": texts})).repartition(4)
    ds = ds.map_batches(pipeline.Embedder, fn_constructor_kwargs={"dtype": "float32", "num_threads": 1},
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
                        batch_format="pyarrow", batch_size=8)
    table = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("row")
    assert table.column_names == ["row", "text", "embedding"] and table.num_rows == N
    embedding = table.column("embedding")
    assert embedding.null_count == 2 and not embedding[7].is_valid and not embedding[20].is_valid
    got = np.stack([np.asarray(embedding[i].values, dtype=np.float32) for i in good])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
