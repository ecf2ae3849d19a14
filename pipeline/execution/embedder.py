"""`pipeline.Embedder`: the packed engine as a Ray Data callable class (issue 15 item 7).

For users whose corpus already flows through Ray Data: `ds.map_batches(Embedder, ...)` runs one
engine per actor of the pool and appends an `embedding` column to each Arrow batch. The vectors
are the engine's, so they equal `pipeline.run`'s for the same model and engine options. Rows
whose text is null, empty or whitespace-only get a null embedding (`pipeline.run` reports them
in `_errors.parquet` instead). Resume, manifests and exactly-once output are `pipeline.run`'s;
with Ray Data the dataset's own writer and retries decide those.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from workers import Engine, EngineConfig

from ..inputs.validate import bad_text_mask
from ..output.writer import embedding_array
from .actor import EngineThread
from .model_sync import ModelSpec, ensure_local_model, is_uri, model_spec


class Embedder:
    """Embed the `text_column` of each batch; returns the batch with `output_column` appended
    (`fixed_size_list<float32>[dim]`, null for blank texts).

    Args:
        model: a model folder on every node, a URI (`s3://bucket/model-folder`: each node makes
            one cached copy, as `pipeline.run` does), or `pipeline.model_spec(path)` made on
            the driver for a folder only the driver has (its bytes travel through Ray's object
            store to each node's cache). None is the bundled all-MiniLM-L6-v2.
        text_column: the column holding the texts.
        output_column: the name of the appended column (default "embedding").
        num_threads: torch threads of this actor's engine; give the actor as many CPUs
            (`num_cpus=` of map_batches). On CPU-only clusters keep actors' CPUs below the
            node's total, or Ray Data's read tasks never get a CPU (a deadlock: docs/DESIGN.md).
        **engine_options: `workers.EngineConfig` fields (dtype, device, max_length, pooling,
            normalize, dimensions, truncation, ...), as for `pipeline.run`.

    Examples:
        >>> import ray, pipeline
        >>> ds = ray.data.from_items([{"text": "a first passage"}, {"text": "and a second"}])
        >>> ds = ds.map_batches(pipeline.Embedder, fn_constructor_kwargs={"num_threads": 1},
        ...                     compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
        ...                     batch_format="pyarrow", batch_size=256)
        >>> ds.take(1)[0]["embedding"].shape  # doctest: +SKIP
        (384,)
    """

    def __init__(self, model=None, text_column: str = "text", output_column: str = "embedding",
                 num_threads: int | None = None, **engine_options):
        if num_threads:
            # As in the pipeline's actors: the tokenizer's pool must not take every core.
            os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(num_threads)
        if model is not None:
            engine_options["model"] = _local_model(model)
        self._on_engine_thread = EngineThread()  # built and called on one thread (see EngineThread)
        self.engine = self._on_engine_thread(Engine, EngineConfig(num_threads=num_threads, **engine_options))
        self.text_column, self.output_column = text_column, output_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not isinstance(batch, pa.Table):
            raise TypeError(f"Embedder takes Arrow batches, got {type(batch).__name__}; pass "
                            "batch_format='pyarrow' to map_batches")
        if self.text_column not in batch.column_names:
            raise ValueError(f"column {self.text_column!r} not in the batch (columns "
                             f"{batch.column_names}); pass fn_constructor_kwargs={{'text_column': ...}}")
        text = batch.column(self.text_column)
        good = ~bad_text_mask(text)
        vectors = np.zeros((batch.num_rows, self.engine.dim), dtype=np.float32)
        if good.any():
            vectors[good] = self._on_engine_thread(self.engine.embed, text.filter(pa.array(good)).to_pylist())
        column = embedding_array(vectors, "float32")
        if not good.all():
            column = pa.FixedSizeListArray.from_arrays(column.values, self.engine.dim,
                                                       mask=pa.array(~good))
        return batch.append_column(self.output_column, column)


def _local_model(model) -> str:
    """The folder this actor's engine loads: a ModelSpec's or a URI's copy in this node's cache
    (`pipeline/execution/model_sync.py`: copied once per node), a local path as given."""
    if isinstance(model, ModelSpec):
        return ensure_local_model(model)
    model = os.fspath(model)
    # A URI is described (hashed) here, in the actor: reading it once per actor is the price of
    # passing a plain string; pipeline.model_spec(uri) on the driver reads it once in all.
    return ensure_local_model(model_spec(model)) if is_uri(model) else model
