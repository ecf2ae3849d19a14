"""Embed (or score, or classify) a whole corpus with a pool of engine actors on Ray; read it back.

    import pipeline
    result = pipeline.run("corpus/*.parquet", output="embeddings/")
    table = pipeline.read_embeddings("embeddings/")          # id, embedding, pass-through
    matrix = pipeline.read_embeddings("embeddings/", as_numpy=True)

    pipeline.run("pairs.parquet", output="scores/", model="cross-encoder/", task="score",
                 text_column="query", pair_column="passage")
    scores = pipeline.read_scores("scores/", as_numpy=True)  # (n,) float32
    pipeline.shutdown()  # stop the engine actors kept warm between calls (and a Ray run() started)

    pipeline.run("corpus.parquet", output="colbert/", model="colbert-folder/", task="tokens")
    vectors = pipeline.read_tokens("colbert/", as_numpy=True)  # [(L_i, d) float16]
    pipeline.run("corpus.parquet", output="splade/", model="splade-folder/", task="sparse")
    pairs = pipeline.read_sparse("splade/", as_numpy=True)     # [(indices, values)]

The data flow (plan, resume, dispatch, embed, write, commit, finish) is in docs/DESIGN.md; each step
has its own module here. The actor class lives in `pipeline/execution/actor.py`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa

from .config import PipelineConfig
from .errors import (BadRowsError, ClusterUnreachableError, FingerprintMismatch, InputError,
                     InputNotFoundError, OutputWriteError, PipelineError, RunFailedError,
                     RunInterrupted, ShardFailedError, WorkersLostError)
from .execution.driver import engine_option_names, execute
from .execution.embedder import Embedder
from .execution.model_sync import model_spec
from .execution.warm import shutdown
from .inputs.validate import default_task
from .output.content_hash import HASH_COLUMN
from .output.finish import RunResult
from .output.manifest import Manifest
from .output.output_folder import OutputFolder
from .output.progress import RunStats, WorkerStats
from .output.quantize import QUANT_KEY
from .output.quantize import decode as _decode
from .output.writer import embedding_array, ragged_rows, to_numpy
from .redact import redact, redact_error
from .tasks import TASKS

__all__ = ["run", "shutdown", "model_spec", "read_embeddings", "read_scores", "read_tokens", "read_sparse", "Embedder", "to_numpy", "RunResult", "RunStats", "WorkerStats",
           "PipelineConfig", "OutputFolder", "PipelineError", "InputError", "FingerprintMismatch",
           "RunFailedError", "ShardFailedError", "BadRowsError", "OutputWriteError",
           "WorkersLostError", "ClusterUnreachableError", "RunInterrupted", "redact"]


def run(data, *, output=None, model=None, text_column="text", id_column=None, num_workers=None,
        address=None, keep_warm=True, **options) -> RunResult:
    """Embed every row of `data` with `model` on Ray (or score / classify it: `task=`); write
    Parquet/Arrow parts or return the results in memory.

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
        model: a model folder: a local path (on a cluster it may exist only where the driver
            runs) or a URI (`s3://bucket/models/x`); each node loads its own copy, cached by
            content hash (`pipeline/execution/model_sync.py`). None is the bundled all-MiniLM-L6-v2.
        text_column: the column with the texts (the queries with task="score"). id_column: the
            column copied to `id` (None: the global row index).
        num_workers: engine actors (None or "auto": one per GPU, or one per 8 CPU cores at
            most, and nodes that join the cluster mid-run get workers too).
        address: the Ray cluster ("host:port", "ray://host:port", or "local" for a new local
            Ray); None: RAY_ADDRESS, else the cluster `ray start` recorded on this machine, else
            a new local Ray. An address nothing answers fails within seconds with
            `ClusterUnreachableError` naming it and the fix.
        keep_warm: keep the engine actors (and a local Ray this call started) up after a clean
            run for the next call with the same engine settings (see below); False: stop them
            at the end, e.g. before other Ray work that needs their CPUs.
        **options: `PipelineConfig` fields (task, pair_column, shard_rows, threads_per_worker,
            output_format, output_dtype, passthrough_columns, on_bad_row, cast_text, overwrite,
            max_retries, max_restarts, restart_timeout_s, progress, in_process_rows) and `workers.EngineConfig`
            fields (dtype, device, max_num_batched_tokens, max_length, pooling, normalize,
            dimensions, activation, ...). `task="score"` (a cross-encoder or LLM-reranker folder)
            needs `pair_column=`, the passage paired with each row's `text_column` query; parts
            hold `id, score` (float32). `task="classify"` (a sequence classifier) parts hold `id,
            logits` (fixed_size_list<float32>[num_labels]), `label` (the argmax's id2label
            name). `task="tokens"` parts hold `id, tokens` (list<fixed_size_list<float16>[d]>,
            the document side's token vectors), `num_tokens`; `task="sparse"` (a SPLADE folder)
            `id, indices, values`; `task="bge-m3"` all of `embedding, indices, values, tokens,
            num_tokens` from one forward pass. `output_dtype`: embed float32 (default) |
            float16 | int8 | ubinary; tokens / bge-m3 float16 (default) | float32 (token
            vectors only); other tasks float32. `max_part_bytes` (default 256 MiB) bounds a
            token task's part. `chunking="late" | "split"` (with `chunk_tokens=`, default
            256, and `chunk_overlap=`, default 0; or `task="chunks"`) writes one row per chunk
            of each text: `id, chunk, char_start, char_end, embedding` (any output_dtype of
            embed), pass-through columns repeated; `spans_column=` takes each text's chunks as
            [char_start, char_end] pairs from a column (README, "Long documents").
            `reuse="out/previous"` (an earlier run's output folder or URI): rows whose content
            hash (prompt, text, pair text; the parts' `content_hash` column) it holds are
            copied from it, the rest embedded; its settings must equal this run's, else
            `FingerprintMismatch` names the difference (`reuse_mismatch="ignore"`: embed every
            row); `result.manifest["summary"]["reuse"]` counts rows reused, embedded and dropped
            (README, "Incremental runs").

    Returns:
        RunResult with `.output`, `.stats` (rows, tokens, seconds, tokens_per_s, per worker,
        truncated, bad_rows, duplicate_ids), `.manifest`, and for in-memory runs `.errors`
        and `.embeddings` (embed), `.scores` (score), `.logits` and `.labels` (classify),
        `.tokens` (tokens), `.sparse` (sparse), or `.embeddings`, `.sparse`, `.tokens` (bge-m3),
        `.chunks` (chunks: per row its (char_start, char_end, vector) list).

    `progress`: None (default) prints the progress bar and summary table for a run with an
    `output` folder and one line for an in-memory run; True both, False nothing. Ctrl-C raises
    `RunInterrupted` (a KeyboardInterrupt) saying how many shards are committed; rerun with the
    same output to resume. A str `data` must name a file, folder, glob match or URI (texts go in
    a list). A row that kills its worker is isolated and reported as a bad row
    (`stats.isolated_rows`), the rest of its shard embedded.

    Every input row is embedded or reported: a null, empty or whitespace-only text (in either
    column of a pair) is not embedded and, with on_bad_row="record" (default), listed with its id, shard, row and reason
    in `output/_errors.parquet`; rows whose id repeats are embedded and listed there too.
    Missing columns, a non-string text column (unless cast_text=True), a model folder that
    cannot load and an output folder holding files the pipeline did not write are refused with
    InputError (a ValueError) / FileNotFoundError before Ray starts.

    Uses the Ray cluster already initialised (or `address`); else starts a local one, except for
    an in-memory input of at most `in_process_rows` rows (default 10,000), which one engine in
    this process embeds without Ray (`pipeline/execution/local.py`; kept for later calls like warm actors;
    `in_process_rows=0` or `address="local"` always uses Ray). The engine
    actors stay up after a clean run (warm): a later call in this process with the same engine
    settings (EngineConfig options, model, num_workers, threads_per_worker, max_restarts) reuses
    them, with no Ray start and no model load; other settings replace them. `pipeline.shutdown()`
    (or interpreter exit) stops them, and the local Ray too when this function started it. On a cluster, a worker whose node leaves and cannot be restarted within
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
    if "task" not in options and any(options.get(k) is not None for k in ("chunking", "chunk_tokens")):
        options["task"] = "chunks"  # chunk vectors: late or split chunking
    if "task" not in options:  # the model folder's kind decides (a CrossEncoder folder scores)
        options["task"] = default_task(None if model is None else os.fspath(model),
                                       bool(options.get("allow_pickle")))
    config = PipelineConfig(text_column=text_column, id_column=id_column, num_workers=num_workers,
                            address=address,
                            **{k: v for k, v in options.items() if k in pipe_names})
    engine_options = {k: v for k, v in options.items() if k in engine_names and k not in pipe_names}
    engine_options["task"] = config.task  # the engine serves the same task (PipelineConfig owns the name)
    if model is not None:
        engine_options["model"] = os.fspath(model)
    try:
        return execute(data, output, config, engine_options, keep_warm=keep_warm)
    except Exception as e:  # a library may have quoted a whole URI: no credentials in the text
        raise redact_error(e)


def read_embeddings(path, *, columns=None, as_numpy=False, allow_partial=False, dequantize=False):
    """The vectors of a finished run (task="embed", or bge-m3's dense vectors), in input order,
    as a pyarrow Table (or an (n, dim) array).

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
    folder, manifest = _open_output(path, "read_embeddings", allow_partial)
    columns = _own_columns(manifest, "read_embeddings", columns)
    table = _read_parts(folder, manifest, ["embedding"] if as_numpy else columns)
    if table is None:
        return np.zeros((0, 0), dtype=np.float32) if as_numpy else pa.table({})
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


def read_scores(path, *, columns=None, as_numpy=False, allow_partial=False):
    """The results of a finished task="score" or task="classify" run, in input order, as a
    pyarrow Table (or a NumPy array).

    Only the parts named by the manifest are read; embeddings are read by `read_embeddings`,
    and each of the two refuses the other's output, naming the right one.

    Args:
        path: the `output` folder of `pipeline.run` (local or URI).
        columns: columns to read (default: all: `id`, then `score` (score) or `logits` and
            `label` (classify), then pass-through).
        as_numpy: score: the (n,) float32 scores; classify: the (n, num_labels) float32 logits
            (their names: the table's `label` column, or `Engine(...).labels`).
        allow_partial: read the committed shards of an unfinished run instead of raising.

    Example (a cross-encoder folder and a Parquet file of query/passage pairs):

        pipeline.run("pairs.parquet", output="scores/", model="ms-marco-MiniLM-L-6-v2",
                     task="score", text_column="query", pair_column="passage")
        pipeline.read_scores("scores/").column_names          # ['id', 'score']
        pipeline.read_scores("scores/", as_numpy=True)        # array([0.93, 0.02, ...], float32)
    """
    folder, manifest = _open_output(path, "read_scores", allow_partial)
    task = _task_of(manifest)
    values = TASKS[task].columns[0].name  # score, or logits
    table = _read_parts(folder, manifest, [values] if as_numpy else columns)
    if not as_numpy:
        return pa.table({}) if table is None else table
    if table is None:
        return np.zeros((0,) if task == "score" else (0, 0), dtype=np.float32)
    return table.column(values).to_numpy() if task == "score" else to_numpy(table, values)


def read_tokens(path, *, columns=None, as_numpy=False, allow_partial=False):
    """The token vectors of a finished task="tokens" (or "bge-m3": its multi-vector output) run,
    in input order, as a pyarrow Table or a list of (L_i, d) arrays.

    Args:
        path: the `output` folder of `pipeline.run` (local or URI).
        columns: columns to read (default: `id`, `tokens`, `num_tokens`, pass-through).
        as_numpy: one (L_i, d) array per row, of the stored dtype (float16 unless the run
            passed output_dtype="float32"); views of one buffer per part.
        allow_partial: read the committed shards of an unfinished run instead of raising.

    Example (a ColBERT / MultiVectorEncoder folder, or any model for its last hidden states):

        pipeline.run("corpus.parquet", output="colbert/", model="colbert-folder/", task="tokens")
        pipeline.read_tokens("colbert/").column_names    # ['id', 'tokens', 'num_tokens']
        docs = pipeline.read_tokens("colbert/", as_numpy=True)
        maxsim = (query @ docs[0].T.astype("float32")).max(axis=1).sum()
    """
    folder, manifest = _open_output(path, "read_tokens", allow_partial)
    columns = _own_columns(manifest, "read_tokens", columns)
    table = _read_parts(folder, manifest, ["tokens"] if as_numpy else columns)
    if not as_numpy:
        return pa.table({}) if table is None else table
    return [] if table is None else ragged_rows(table.column("tokens"))


def read_sparse(path, *, columns=None, as_numpy=False, allow_partial=False):
    """The sparse vectors of a finished task="sparse" (or "bge-m3") run, in input order, as a
    pyarrow Table or a list of (indices int32, values float32) pairs sorted by index.

    Args:
        path: the `output` folder of `pipeline.run` (local or URI).
        columns: columns to read (default: `id`, `indices`, `values`, pass-through).
        as_numpy: one (indices, values) pair of NumPy arrays per row.
        allow_partial: read the committed shards of an unfinished run instead of raising.

    Example (a SPLADE / SparseEncoder folder):

        pipeline.run("corpus.parquet", output="splade/", model="splade-folder/", task="sparse")
        pipeline.read_sparse("splade/").column_names     # ['id', 'indices', 'values']
        indices, values = pipeline.read_sparse("splade/", as_numpy=True)[0]

    `python jobs/search.py --embeddings splade/ --export-sparse out.jsonl` writes them as JSON
    lines for a search engine's sparse-vector field.
    """
    folder, manifest = _open_output(path, "read_sparse", allow_partial)
    columns = _own_columns(manifest, "read_sparse", columns)
    table = _read_parts(folder, manifest, ["indices", "values"] if as_numpy else columns)
    if not as_numpy:
        return pa.table({}) if table is None else table
    if table is None:
        return []
    return list(zip(ragged_rows(table.column("indices")), ragged_rows(table.column("values"))))


def _task_of(manifest: Manifest) -> str:
    return manifest.fingerprint.get("engine", {}).get("task", "embed")


def _own_columns(manifest: Manifest, reader: str, columns):
    """The columns `reader` reads by default: all of them (None), except from an output whose
    task has several readers (bge-m3): `id`, the reader's column group, the pass-through ones."""
    groups = dict(TASKS[_task_of(manifest)].readers)
    if columns is not None or groups.get(reader) is None:
        return columns
    return ["id", *groups[reader], *manifest.fingerprint.get("passthrough_columns", [])]


def _open_output(path, reader: str, allow_partial: bool):
    """(folder, manifest) of a `pipeline.run` output whose task lists `reader` in its readers."""
    folder = OutputFolder.open(path)
    manifest = Manifest.load(folder)
    if manifest is None:
        raise InputNotFoundError(f"{folder} has no _manifest.json: not the output of pipeline.run")
    task = _task_of(manifest)
    readers = [name for name, _ in TASKS[task].readers] if task in TASKS else []
    if reader not in readers:
        names = readers or ["read_embeddings"]
        named = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise InputError(f"{folder} holds the output of task={task!r}; read it with "
                         f"pipeline.{named}({str(folder)!r})")
    if not manifest.data.get("complete") and not allow_partial:
        raise InputError(f"the run writing {folder} has not finished ({len(manifest.shards)} of "
                         f"{manifest.plan['num_shards']} shards committed); rerun pipeline.run "
                         "with the same output to finish it, or pass allow_partial=True")
    return folder, manifest


def _read_parts(folder: OutputFolder, manifest: Manifest, columns) -> pa.Table | None:
    """The committed parts as one table in shard order (None when there are none)."""
    records = [record for _, record in manifest.records()]  # in shard order
    tables = list(folder.read_parts(records, columns))
    if columns is None:  # the content hash only when asked for (`pipeline/output/content_hash.py`)
        tables = [t.drop_columns([HASH_COLUMN]) if HASH_COLUMN in t.column_names else t for t in tables]
    return pa.concat_tables(tables) if tables else None
