"""Exact search over token-level outputs, streamed part by part (issue 13 item 5); no index.

    tokens  (multi-vector)  MaxSim:  s(q, D) = sum_i max_j q_i . d_j          (ColBERT, PyLate)
    sparse  (SPLADE)        dot:     s(q, D) = sum_{t in q and D} w_q[t] w_D[t]
    bge-m3  hybrid:  w_dense * (q_cls . D_cls) + w_sparse * dot + w_multi * (1/|q|) sum_i max_j q_i . d_j
                     (bge-m3 averages MaxSim over the query's tokens; weights default 0.4, 0.2, 0.4
                     as in its paper)

Queries are embedded by an engine built from the output's manifest (same model and options;
task="tokens" queries take the folder's query side, `is_query=True`, when it is multi-vector; a
plain folder's hidden states have one side). The committed parts are read one at a time, in
shard order, and scored `batch_rows` rows at a time (token vectors widened to float32 per
batch), so memory is one part plus one batch's score matrix, never the whole output; each query
keeps its top k in a heap (equal scores: the earlier row first). A row without vectors scores 0.
`export_sparse` streams a sparse or bge-m3 output to JSON lines `{"id", "indices", "values"}`.
"""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from workers import Engine, EngineConfig

from ..errors import InputError, InputNotFoundError
from ..output.manifest import Manifest
from ..output.output_folder import OutputFolder
from ..output.writer import ragged_numpy

MODES = {"tokens": "maxsim", "sparse": "sparse dot product", "bge-m3": "hybrid"}
WEIGHTS = (0.4, 0.2, 0.4)   # dense, sparse, multi-vector (bge-m3 paper)
# Engine options that change a query's vectors; runtime ones (threads, budgets) stay default.
QUERY_OPTIONS = ("model", "task", "dtype", "max_length", "truncation", "allow_pickle",
                 "implementation", "lora", "enable_bidirectional")
MUST_MATCH = ("model_hash", "dimensions", "workflow", "task", "multi_vector")


@dataclass(frozen=True)
class Hit:
    """One result: the row's `id`, its score and its position in the output (0-based)."""

    id: object
    score: float
    row: int


def open_output(path) -> tuple[OutputFolder, Manifest, str]:
    """(folder, manifest, task) of a finished tokens / sparse / bge-m3 output."""
    folder = OutputFolder.open(path)
    manifest = Manifest.load(folder)
    if manifest is None:
        raise InputNotFoundError(f"{folder} has no _manifest.json: not the output of pipeline.run")
    task = manifest.fingerprint.get("engine", {}).get("task", "embed")
    if task not in MODES:
        raise InputError(f"{folder} holds the output of task={task!r}; searching without an index "
                         f"works on task='tokens', 'sparse' or 'bge-m3' outputs; build a FAISS index "
                         "of embeddings with jobs/build_index.py and pass --index")
    if not manifest.data.get("complete"):
        raise InputError(f"the run writing {folder} has not finished; rerun it to finish first")
    return folder, manifest, task


def query_engine(manifest: Manifest):
    """An engine that embeds queries as the output's passages were (model, task, options)."""
    recorded = manifest.data.get("engine_options")
    if recorded is None:
        raise InputError("the output's _manifest.json records no engine_options (written by an "
                         "older pipeline); rerun jobs/embed_corpus.py into a new folder")
    engine = Engine(EngineConfig(**{k: v for k, v in recorded.items() if k in QUERY_OPTIONS}))
    want, got = manifest.fingerprint["engine"], engine.fingerprint()
    diffs = [f"{k}: {want.get(k)!r} in the output, {got.get(k)!r} now" for k in MUST_MATCH
             if want.get(k) != got.get(k)]
    if diffs:
        raise InputError("the query engine does not reproduce the output's vectors: " + "; ".join(diffs))
    return engine


def check_weights(weights) -> tuple[float, float, float]:
    """(w_dense, w_sparse, w_multi) as floats; InputError unless three finite numbers >= 0."""
    w = tuple(float(x) for x in weights)
    if len(w) != 3 or not all(np.isfinite(x) and x >= 0 for x in w) or not any(w):
        raise InputError(f"weights={weights!r} must be three numbers >= 0 (dense, sparse, "
                         f"multi-vector), not all 0, e.g. {','.join(map(str, WEIGHTS))}")
    return w


def encode_queries(engine, task: str, queries: list[str], multi_vector: bool) -> list[dict]:
    """One dict per query with what its task scores: "tokens" (Lq, d), "sparse" (indices,
    values), "dense" (d,)."""
    if task == "tokens":
        return [{"tokens": t} for t in engine.embed_tokens(queries, is_query=multi_vector)]
    if task == "sparse":
        return [{"sparse": s} for s in engine.embed_sparse(queries)]
    out = engine.embed_m3(queries)
    return [{"dense": d, "sparse": s, "tokens": c}
            for d, s, c in zip(out["dense"], out["sparse"], out["colbert"])]


def maxsim(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """sum_i max_j q_i . d_j for each row; `vectors` (N, d) float32 rows [offsets[r], offsets[r+1])."""
    n = len(offsets) - 1
    scores = np.zeros(n, dtype=np.float32)
    counts = np.diff(offsets)
    nonempty = np.flatnonzero(counts > 0)
    if len(nonempty) == 0 or len(query) == 0:
        return scores
    sims = query @ vectors.T                                           # (Lq, N)
    best = np.maximum.reduceat(sims, offsets[nonempty], axis=1)        # (Lq, rows with tokens)
    scores[nonempty] = best.sum(axis=0)
    return scores


def sparse_dot(query: tuple[np.ndarray, np.ndarray], indices: np.ndarray, values: np.ndarray,
               offsets: np.ndarray) -> np.ndarray:
    """sum over shared indices of w_q w_D for each row; `query` indices sorted (as stored)."""
    q_idx, q_val = query
    n = len(offsets) - 1
    if len(q_idx) == 0 or len(indices) == 0:
        return np.zeros(n, dtype=np.float32)
    pos = np.minimum(np.searchsorted(q_idx, indices), len(q_idx) - 1)
    contrib = np.where(q_idx[pos] == indices, q_val[pos] * values, 0.0)
    rows = np.repeat(np.arange(n), np.diff(offsets))
    return np.bincount(rows, weights=contrib, minlength=n).astype(np.float32)


def _batch_scores(task: str, batch: pa.RecordBatch, query: dict, weights) -> np.ndarray:
    """Scores of one query against every row of `batch`."""
    total = np.zeros(batch.num_rows, dtype=np.float32)
    if task in ("sparse", "bge-m3") and (task == "sparse" or weights[1]):
        idx, off = ragged_numpy(batch.column("indices"))
        val, _ = ragged_numpy(batch.column("values"))
        total += (weights[1] if task == "bge-m3" else 1.0) * sparse_dot(query["sparse"], idx, val, off)
    if task in ("tokens", "bge-m3") and (task == "tokens" or weights[2]):
        vectors, off = ragged_numpy(batch.column("tokens"))
        sims = maxsim(query["tokens"], vectors.astype(np.float32, copy=False), off)
        total += sims if task == "tokens" else weights[2] * sims / max(1, len(query["tokens"]))
    if task == "bge-m3" and weights[0]:
        dense = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
        total += weights[0] * (dense.reshape(batch.num_rows, -1) @ query["dense"])
    return total


def _columns(task: str) -> list[str]:
    return {"tokens": ["id", "tokens"], "sparse": ["id", "indices", "values"],
            "bge-m3": ["id", "embedding", "indices", "values", "tokens"]}[task]


def search(path, queries: list[str], k: int = 10, weights=WEIGHTS, engine=None,
           batch_rows: int = 1024) -> list[list[Hit]]:
    """The top `k` rows of a tokens / sparse / bge-m3 output for each query, best first, by exact
    MaxSim, sparse dot product or bge-m3's hybrid score (module docstring).

    Args:
        path: the `output` folder of `pipeline.run`.
        queries: query texts.
        k: hits per query.
        weights: bge-m3 only: (dense, sparse, multi-vector) weights.
        engine: the query engine (default: `query_engine(manifest)`, built once here).
        batch_rows: rows scored at a time (bounds the score matrix).

    Example:
        hits = late_search.search("colbert/", ["what is late interaction?"], k=5)
        hits[0][0].id, hits[0][0].score
    """
    if isinstance(queries, str):
        raise TypeError("queries is a list of strings; wrap a single query as [query]")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k={k!r} must be a positive integer")
    weights = check_weights(weights)
    folder, manifest, task = open_output(path)
    engine = engine or query_engine(manifest)
    multi_vector = bool(manifest.fingerprint["engine"].get("multi_vector"))
    encoded = encode_queries(engine, task, list(queries), multi_vector)
    heaps: list[list] = [[] for _ in encoded]
    row = 0
    for shard_id in sorted(manifest.shards, key=int):
        part = folder.read_part(manifest.shards[shard_id]["path"], _columns(task))
        for batch in part.to_batches(max_chunksize=batch_rows):
            ids = batch.column("id").to_pylist()
            for heap, query in zip(heaps, encoded):
                scores = _batch_scores(task, batch, query, weights)
                top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k] if len(scores) > k else range(len(scores))
                for i in top:
                    item = (float(scores[i]), -(row + int(i)), ids[i])
                    if len(heap) < k:
                        heapq.heappush(heap, item)
                    elif item[:2] > heap[0][:2]:
                        heapq.heapreplace(heap, item)
            row += batch.num_rows
        del part
    return [[Hit(ident, score, -neg) for score, neg, ident in sorted(heap, key=lambda h: (-h[0], -h[1]))]
            for heap in heaps]


def export_sparse(path, out_path) -> int:
    """Write every row of a sparse or bge-m3 output as a JSON line {"id", "indices", "values"}
    (what search engines' sparse-vector fields ingest) to `out_path`; returns the rows written.
    Streams one part at a time."""
    folder, manifest, task = open_output(path)
    if task not in ("sparse", "bge-m3"):
        raise InputError(f"{folder} holds task={task!r} output, which has no sparse vectors; "
                         "--export-sparse reads a task='sparse' or 'bge-m3' output")
    rows = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for shard_id in sorted(manifest.shards, key=int):
            part = folder.read_part(manifest.shards[shard_id]["path"], ["id", "indices", "values"])
            for batch in part.to_batches(max_chunksize=4096):
                for ident, idx, val in zip(*(batch.column(c).to_pylist() for c in ("id", "indices", "values"))):
                    out.write(json.dumps({"id": ident, "indices": idx, "values": val}) + "\n")
                rows += batch.num_rows
    return rows
