"""Embed a whole corpus with a pool of engine actors on Ray; read the vectors back.

    import pipeline
    result = pipeline.run("corpus/*.parquet", output="embeddings/")
    table = pipeline.read_embeddings("embeddings/")          # id, embedding, pass-through
    matrix = pipeline.read_embeddings("embeddings/", as_numpy=True)

The data flow (plan, resume, dispatch, embed, write, commit, finish) is in DESIGN.md; each step
has its own module here. The actor class lives in `pipeline/actor.py`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa

from .config import PipelineConfig
from .driver import engine_option_names, execute
from .embedder import Embedder
from .errors import (BadRowsError, ClusterUnreachableError, FingerprintMismatch, InputError,
                     InputNotFoundError, OutputWriteError, PipelineError, RunFailedError,
                     ShardFailedError, WorkersLostError)
from .finish import RunResult
from .manifest import Manifest
from .output_folder import OutputFolder
from .progress import RunStats, WorkerStats
from .quantize import QUANT_KEY
from .redact import redact, redact_error
from .quantize import decode as _decode
from .writer import embedding_array, to_numpy

__all__ = ["run", "read_embeddings", "Embedder", "to_numpy", "RunResult", "RunStats", "WorkerStats",
           "PipelineConfig", "OutputFolder", "PipelineError", "InputError", "FingerprintMismatch",
           "RunFailedError", "ShardFailedError", "BadRowsError", "OutputWriteError",
           "WorkersLostError", "ClusterUnreachableError", "redact"]


def run(data, *, output=None, model=None, text_column="text", id_column=None, num_workers=None,
        address=None, **options) -> RunResult:
    """Embed every row of `data` with `model` on Ray; write Parquet/Arrow parts or return vectors.

    Args:
        data: a Parquet file, folder or glob (local or a pyarrow filesystem URI such as
            "s3://bucket/corpus/*.parquet"; several paths as a list of `pathlib.Path`), a
            `datasets.Dataset` or its `save_to_disk` folder, a `ray.data.Dataset`, a
            `pyarrow.Table`, a `pandas.DataFrame`, or a list of strings.
        output: folder (or URI) for the parts and `_manifest.json`. Rerunning into it resumes:
            committed shards are skipped, a different model/settings/input is refused with
            `FingerprintMismatch`. None (in-memory inputs only): vectors in `result.embeddings`.
            Errors are typed (`pipeline/errors.py`): `InputError` (a ValueError) for bad
            arguments or input, `FingerprintMismatch`, `BadRowsError`, and `RunFailedError`
            (a RuntimeError; e.g. `ShardFailedError`) once work has begun: rerun to resume.
        model: a local model folder; None is the bundled all-MiniLM-L6-v2.
        text_column: the column with the texts. id_column: the column copied to `id`
            (None: the global row index).
        num_workers: engine actors (None: one per GPU, or one per 8 CPU cores at most).
        address: the Ray cluster ("host:port", "ray://host:port", or "local" for a new local
            Ray); None: RAY_ADDRESS, else the cluster `ray start` recorded on this machine, else
            a new local Ray. An address nothing answers fails within seconds with
            `ClusterUnreachableError` naming it and the fix.
        **options: `PipelineConfig` fields (shard_rows, threads_per_worker, output_format,
            output_dtype, passthrough_columns, on_bad_row, cast_text, overwrite, max_retries,
            max_restarts, restart_timeout_s, progress) and `workers.EngineConfig` fields (dtype, device,
            max_num_batched_tokens, max_length, pooling, normalize, dimensions, ...).

    Returns:
        RunResult with `.output`, `.stats` (rows, tokens, seconds, tokens_per_s, per worker,
        truncated, bad_rows, duplicate_ids), `.manifest`, and `.embeddings` / `.errors` for
        in-memory runs.

    Every input row is embedded or reported: a null, empty or whitespace-only text is not
    embedded and, with on_bad_row="record" (default), listed with its id, shard, row and reason
    in `output/_errors.parquet`; rows whose id repeats are embedded and listed there too.
    Missing columns, a non-string text column (unless cast_text=True), a model folder that
    cannot load and an output folder holding files the pipeline did not write are refused with
    InputError (a ValueError) / FileNotFoundError before Ray starts.

    Uses the Ray cluster already initialised (or `address`); else starts a local one and shuts
    it down afterwards. On a cluster, a worker whose node leaves and cannot be restarted within
    `restart_timeout_s` is given up: its shards go to the others and `result.stats.lost_workers`
    names it. Credentials in URIs (`s3://KEY:SECRET@bucket/...`, `?secret_key=`) are redacted in
    everything written or raised; prefer the environment (AWS_ACCESS_KEY_ID, ...) for them.

    Examples:
        >>> import pipeline
        >>> result = pipeline.run(["a first passage", "and a second"], progress=False)
        >>> result.embeddings.shape
        (2, 384)
        >>> result.stats.rows
        2
    """
    pipe_names = {f.name for f in dataclasses.fields(PipelineConfig)}
    engine_names = engine_option_names()
    unknown = set(options) - pipe_names - engine_names
    if unknown:
        raise InputError(f"unknown option(s) {sorted(unknown)}; pipeline options are "
                         f"{sorted(pipe_names)}, engine options are {sorted(engine_names)}")
    config = PipelineConfig(text_column=text_column, id_column=id_column, num_workers=num_workers,
                            address=address,
                            **{k: v for k, v in options.items() if k in pipe_names})
    engine_options = {k: v for k, v in options.items() if k in engine_names and k not in pipe_names}
    if model is not None:
        engine_options["model"] = os.fspath(model)
    try:
        return execute(data, output, config, engine_options)
    except Exception as e:  # a library may have quoted a whole URI: no credentials in the text
        raise redact_error(e)


def read_embeddings(path, *, columns=None, as_numpy=False, allow_partial=False, dequantize=False):
    """The vectors of a finished run, in input order, as a pyarrow Table (or an (n, dim) array).

    Only the parts named by the manifest are read, so leftovers of a crash are never seen.

    Args:
        path: the `output` folder of `pipeline.run` (local or URI).
        columns: columns to read (default: all: `id`, `embedding`, pass-through).
        as_numpy: return the embedding matrix only, as NumPy of the stored dtype (float32,
            float16, int8 codes, or ubinary's packed uint8 bytes, dim/8 per row).
        allow_partial: read the committed shards of an unfinished run instead of raising.
        dequantize: the embeddings as float32 (n, dim): int8 decoded with the calibration in
            the manifest, ubinary unpacked to +-1/sqrt(dim) (dot product = sign-vector cosine).

    Examples:
        >>> import pipeline, tempfile
        >>> out = tempfile.mkdtemp()
        >>> _ = pipeline.run(["one", "two", "three"], output=out, progress=False)
        >>> pipeline.read_embeddings(out).column_names
        ['id', 'embedding']
        >>> pipeline.read_embeddings(out, as_numpy=True).shape
        (3, 384)
    """
    folder = OutputFolder.open(path)
    manifest = Manifest.load(folder)
    if manifest is None:
        raise InputNotFoundError(f"{folder} has no _manifest.json: not the output of pipeline.run")
    if not manifest.data.get("complete") and not allow_partial:
        raise InputError(f"the run writing {folder} has not finished ({len(manifest.shards)} of "
                         f"{manifest.plan['num_shards']} shards committed); rerun pipeline.run "
                         "with the same output to finish it, or pass allow_partial=True")
    if as_numpy:
        columns = ["embedding"]
    records = [manifest.shards[k] for k in sorted(manifest.shards, key=int)]
    tables = list(folder.read_parts(records, columns))
    if not tables:
        return np.zeros((0, 0), dtype=np.float32) if as_numpy else pa.table({})
    table = pa.concat_tables(tables)
    if not dequantize or "embedding" not in table.column_names:
        return to_numpy(table) if as_numpy else table
    matrix = _decode(to_numpy(table), manifest.data.get("quantization"))
    if as_numpy:
        return matrix
    index = table.column_names.index("embedding")
    table = table.set_column(index, "embedding", embedding_array(matrix, "float32"))
    # The values are decoded now: drop the record, so they are never decoded twice.
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != QUANT_KEY}
    return table.replace_schema_metadata(metadata)
