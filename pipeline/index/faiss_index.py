"""A faiss index over a pipeline output: built part by part, searched with the corpus's engine.

Files next to the index `PATH`: `PATH.ids.parquet` (row k is the input id of faiss id k; faiss
ids are sequential, so string ids work; for a task="chunks" output also the chunk's `chunk`,
`char_start`, `char_end`: a hit is a chunk, shown as its document id and text span) and `PATH.json` (the embeddings folder, kind, metric,
vector count, dimensions, stored dtype). Normalized float outputs use inner product (= cosine);
unnormalized ones L2; int8 parts are dequantized per part; ubinary parts go to a binary index
(Hamming distance). faiss is the optional extra `index` (`pip install '.[index]'`).
`build(..., kind="lance")` and `Index.load` of a Lance index go to `lance_index.py` (an index on
disk or object storage, for corpora past one machine's memory).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..output import quantize
from . import lance_index
from .corpus import CHUNK_KEYS, Corpus

FAISS_KINDS = ("flat", "hnsw", "ivfpq")
KINDS = (*FAISS_KINDS, lance_index.KIND)
BINARY_KINDS = ("flat", "hnsw")
TRAIN_ROWS = 65_536  # ivfpq training sample cap: 100 MB of 384-d float32 at most
CHUNK_ROWS = 8192    # vectors per `index.add` call


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("faiss is not installed: pip install -c .venv/constraints.txt "
                          "'.[index]' (faiss-cpu==1.15.1), or run make setup") from None
    return faiss


def default_params(kind: str, rows: int, dim: int, nlist=None, m=None, nbits=None) -> dict:
    """ivfpq: nlist ~ 4 sqrt(n) (>= 39 vectors per list), m the largest divisor of dim up to
    dim/8, nbits 8 (fewer on small corpora: ~39 training vectors per code)."""
    if kind != "ivfpq":
        return {}
    nlist = nlist or max(1, min(int(4 * math.sqrt(rows)), rows // 39))
    m = m or max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    nbits = nbits or max(1, min(8, int(math.log2(max(2, rows / 39)))))
    if dim % m:
        raise InputError(f"--m {m} must divide the dimensions ({dim}); e.g. --m {dim // 8 or 1}")
    if rows < max(nlist, 2 ** nbits):
        raise InputError(f"ivfpq needs at least max(nlist, 2**nbits) = {max(nlist, 2 ** nbits)} "
                         f"vectors to train, the corpus has {rows}: lower --nlist/--nbits or use --kind flat")
    return {"nlist": nlist, "m": m, "nbits": nbits}


def new_index(kind: str, dim: int, metric: str, params: dict, hnsw_m: int = 32):
    faiss = import_faiss()
    if metric == "hamming":
        if kind not in BINARY_KINDS:
            raise InputError(f"kind={kind!r} has no binary form for ubinary embeddings; use one of {BINARY_KINDS}")
        if dim % 8:
            raise InputError(f"a binary index needs dimensions divisible by 8, the output has {dim}")
        return faiss.index_binary_factory(dim, "BFlat" if kind == "flat" else f"BHNSW{hnsw_m}")
    # "np": no polysemous training, which costs minutes and only helps Hamming pre-filtering.
    spec = {"flat": "Flat", "hnsw": f"HNSW{hnsw_m}",
            "ivfpq": f"IVF{params.get('nlist')},PQ{params.get('m')}x{params.get('nbits')}np"}[kind]
    return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)


def build(embeddings, index_path, kind: str = "flat", *, nlist=None, m=None, nbits=None,
          hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64, nprobe=None,
          train_rows: int = TRAIN_ROWS, seed: int = 0, threads: int | None = None,
          refine_factor=None) -> dict:
    """Build a `kind` index over the output folder `embeddings`, streaming one part at a time;
    write it with its ids and sidecar files; return the build statistics. `threads`: faiss
    OpenMP threads (None: faiss's default, one per core). kind="lance": `lance_index.build`
    (nlist, m, nprobe and refine_factor apply; `index_path` may be an object-store URI)."""
    if kind not in KINDS:
        raise InputError(f"kind={kind!r} is not supported; choose one of {list(KINDS)}")
    if kind == lance_index.KIND:
        return lance_index.build(embeddings, index_path, nlist=nlist, m=m, nprobe=nprobe,
                                 refine_factor=refine_factor)
    faiss = import_faiss()
    if threads:
        faiss.omp_set_num_threads(threads)
    corpus = Corpus.open(embeddings)
    index_path = os.path.abspath(index_path)
    if corpus.folder.is_local and os.path.commonpath([index_path, corpus.folder.path]) == corpus.folder.path:
        raise InputError(f"{index_path} is inside the embeddings folder {corpus.folder}; write the "
                         "index elsewhere (the pipeline owns that folder)")
    t0 = time.perf_counter()
    dim, rows = corpus.quant["dimensions"], corpus.rows
    if rows == 0:
        raise InputError(f"{corpus.folder} holds no vectors to index")
    params = default_params(kind, rows, dim, nlist, m, nbits)
    index = new_index(kind, dim, corpus.metric, params, hnsw_m)
    if kind == "hnsw":
        index.hnsw.efConstruction, index.hnsw.efSearch = ef_construction, ef_search
    if kind == "ivfpq":
        index.train(_training_sample(corpus, min(rows, train_rows), seed))
        params["nprobe"] = index.nprobe = nprobe or min(params["nlist"], max(8, params["nlist"] // 8))
    os.makedirs(os.path.dirname(index_path), exist_ok=True)
    with _IdsWriter(index_path + ".ids.parquet") as ids_out:
        for keys, vectors in corpus.parts():
            for start in range(0, len(vectors), CHUNK_ROWS):
                index.add(vectors[start:start + CHUNK_ROWS])
            ids_out.write(keys)
    (faiss.write_index_binary if corpus.binary else faiss.write_index)(index, index_path)
    meta = {"embeddings": str(corpus.folder),  # a URI keeps its scheme, its credentials redacted
            "kind": kind, "metric": corpus.metric, "vectors": int(index.ntotal),
            "dimensions": dim, "output_dtype": corpus.quant["output_dtype"], "params": params,
            "hnsw_m": hnsw_m if kind == "hnsw" else None}
    with open(index_path + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    return {**meta, "seconds": time.perf_counter() - t0, "index_bytes": os.path.getsize(index_path)}


def _training_sample(corpus: Corpus, n: int, seed: int) -> np.ndarray:
    """`n` vectors drawn uniformly without replacement, read part by part."""
    keep = np.sort(np.random.default_rng(seed).choice(corpus.rows, n, replace=False))
    out, offset = [], 0
    for _, vectors in corpus.parts():
        lo, hi = np.searchsorted(keep, [offset, offset + len(vectors)])
        out.append(vectors[keep[lo:hi] - offset])
        offset += len(vectors)
    return np.ascontiguousarray(np.concatenate(out))


class _IdsWriter:
    """Appends each part's keys to one Parquet file (`id`, the output's id type; a chunk's
    `chunk`, `char_start`, `char_end`)."""

    def __init__(self, path: str):
        self.path, self.writer = path, None

    def write(self, table: pa.Table) -> None:
        table = table.replace_schema_metadata(None)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()


@dataclass(frozen=True)
class Index:
    """A built index, loaded: the faiss index, the input ids by faiss id, and the sidecar;
    over a chunk output, `spans` holds each faiss id's (chunk, char_start, char_end)."""

    faiss_index: object
    ids: list
    meta: dict
    spans: list | None = None

    @classmethod
    def load(cls, path) -> "Index":
        """The index at `path`, either kind: a Lance index (its PATH.json says kind "lance";
        a local path or URI) opens as a `lance_index.LanceIndex`, with the same `meta` and
        `search` contract."""
        meta = lance_index.read_meta(path)
        if meta is not None and meta.get("kind") == lance_index.KIND:
            return lance_index.LanceIndex.load(path, meta)
        faiss, path = import_faiss(), os.fspath(path)
        for suffix in ("", ".json", ".ids.parquet"):
            if not os.path.exists(path + suffix):
                raise FileNotFoundError(f"{path + suffix} is missing; build the index with "
                                        "jobs/build_index.py --embeddings DIR --index PATH")
        with open(path + ".json") as f:
            meta = json.load(f)
        read = faiss.read_index_binary if meta["metric"] == "hamming" else faiss.read_index
        keys = pq.read_table(path + ".ids.parquet")
        spans = list(zip(*(keys.column(c).to_pylist() for c in CHUNK_KEYS))) \
            if "char_start" in keys.column_names else None
        return cls(read(path), keys.column("id").to_pylist(), meta, spans)

    def search(self, queries: np.ndarray, k: int, nprobe=None, ef_search=None) -> list[list[tuple]]:
        """Per query, up to `k` (id, score, faiss id), best first; score is the inner product,
        the squared L2 distance (l2), or 1 - 2 * hamming / dim, the sign vectors' cosine."""
        if nprobe and hasattr(self.faiss_index, "nprobe"):
            self.faiss_index.nprobe = nprobe
        if ef_search and hasattr(self.faiss_index, "hnsw"):
            self.faiss_index.hnsw.efSearch = ef_search
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.meta["metric"] == "hamming":
            dist, rows = self.faiss_index.search(quantize.pack_bits(queries), k)
            scores = 1.0 - 2.0 * dist / self.meta["dimensions"]
        else:
            scores, rows = self.faiss_index.search(queries, k)
        return [[(self.ids[r], float(s), int(r)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]
