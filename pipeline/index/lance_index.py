"""A Lance index over a pipeline output (kind="lance"): for corpora past one machine's memory.

`build` streams the output's parts one at a time into a Lance dataset at `PATH` (a local folder
or an object-store URI such as `s3://bucket/idx.lance`) with the columns `id` (the input id),
`vector` (float32; int8 parts dequantized), `row` (the vector's position in the output, the
faiss kinds' faiss id), `shard` and `part_row` (the part it came from, and its row there), then
has Lance build an IVF-PQ index over `vector`. `PATH.json` (beside the dataset, on the same
filesystem) holds the same metadata as the faiss kinds' sidecar, with kind "lance". Searches
read only the probed partitions' PQ codes and the refined candidates' vectors, from disk or
object storage: the index is never loaded whole. pylance is in the optional extra `index`.

Memory of the build (stated, measured in docs/SCALE.md): one part of the output plus Lance's
write buffer while writing; then the IVF training sample (at most TRAIN_VECTORS vectors, 400 MB
at 384 dimensions), the PQ training sample (65,536 vectors) and Lance's shuffle buffers
(SHUFFLE_BATCHES batches of 1,024 rows of PQ codes and row ids per concurrent partition).
"""
from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import InputError
from ..fs import absolute, filesystem, is_uri
from ..redact import redact
from .corpus import CHUNK_KEYS, Corpus

KIND = "lance"
TRAIN_VECTORS = 262_144   # cap on the IVF k-means sample: 400 MB of 384-d float32
SHUFFLE_BATCHES = 1024    # Lance's shuffle_partition_batches (default 10,240): ~1M rows per buffer
REFINE_FACTOR = 10        # candidates re-scored exactly per hit (k * 10 vectors read per query)
# pyarrow S3 URI query keys -> Lance (object_store) storage options
_S3_OPTIONS = {"region": "aws_region", "session_token": "aws_session_token"}


def import_lance():
    try:
        import lance
    except ImportError:
        raise ImportError("pylance is not installed: pip install -c .venv/constraints.txt "
                          "'.[index]' (pylance==14.0.3), or run make setup") from None
    return lance


def lance_location(location) -> tuple[str, dict]:
    """(the URI Lance opens, its storage options) for a local path or a pyarrow-style URI:
    `s3://KEY:SECRET@bucket/x?endpoint_override=host:port&scheme=http&region=r` becomes
    `s3://bucket/x` with the credentials, endpoint and region as Lance storage options (without
    credentials in the URI, Lance reads the usual AWS environment variables)."""
    location = os.fspath(location)
    if not is_uri(location):
        return os.path.abspath(location), {}
    parts = urlsplit(location)
    if parts.scheme == "file":
        return parts.path, {}
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    options = {}
    if parts.username:
        options["aws_access_key_id"] = parts.username
        options["aws_secret_access_key"] = parts.password or ""
    if "endpoint_override" in query:
        scheme = query.pop("scheme", "https")
        options["aws_endpoint"] = f"{scheme}://{query.pop('endpoint_override')}"
        options["allow_http"] = str(scheme == "http").lower()
    query.pop("scheme", None)
    query.pop("allow_bucket_creation", None)  # Lance never creates buckets
    options.update({_S3_OPTIONS[k]: query.pop(k) for k in list(query) if k in _S3_OPTIONS})
    if query:
        raise InputError(f"{redact(location)}: URI options {sorted(query)} are not understood by the "
                         f"Lance index; it reads {sorted(['scheme', 'endpoint_override', *_S3_OPTIONS])}")
    return f"{parts.scheme}://{parts.hostname}{parts.path}", options


def read_meta(location) -> dict | None:
    """The `PATH.json` sidecar beside an index at `location` (any kind), or None."""
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path.rstrip("/") + ".json") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


def _write_meta(location, meta: dict) -> None:
    fs, path = filesystem(location)
    with fs.open_output_stream(path.rstrip("/") + ".json") as f:
        f.write(json.dumps(meta, indent=1).encode())


def default_params(rows: int, dim: int, num_partitions=None, num_sub_vectors=None, nprobes=None,
                   refine_factor=None) -> dict:
    """num_partitions ~ sqrt(n) (>= 256 vectors each), num_sub_vectors the largest divisor of
    dim up to dim/8 (8-bit codes: dim/8 bytes per vector; 4-bit under 256 vectors), nprobes
    max(20, partitions/32) (all of them on small corpora), refine_factor REFINE_FACTOR."""
    partitions = num_partitions or max(1, min(round(math.sqrt(rows)), rows // 256))
    sub = num_sub_vectors or max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    if dim % sub:
        raise InputError(f"--m {sub} must divide the dimensions ({dim}); e.g. --m {dim // 8 or 1}")
    if rows < 16:
        raise InputError(f"a lance index trains at least 16 PQ centroids per sub-vector and needs at "
                         f"least 16 vectors, the corpus has {rows}: use --kind flat")
    if partitions > rows:
        raise InputError(f"--nlist {partitions} is more than the corpus's {rows} vectors; lower --nlist")
    return {"num_partitions": partitions, "num_sub_vectors": sub, "num_bits": 8 if rows >= 256 else 4,
            "nprobes": min(partitions, nprobes or max(20, partitions // 32)),
            "refine_factor": REFINE_FACTOR if refine_factor is None else refine_factor}


def build(embeddings, index_path, *, nlist=None, m=None, nprobe=None, refine_factor=None,
          train_vectors: int = TRAIN_VECTORS, threads=None, **_) -> dict:
    """Write the Lance dataset at `index_path` from the output folder `embeddings`, one part at
    a time, build its IVF-PQ index and the `PATH.json` sidecar; return the build statistics.
    `nlist`, `m`, `nprobe` (the faiss kinds' names): partitions, PQ sub-vectors, partitions
    searched; `refine_factor`: candidates per hit re-scored with the stored vectors."""
    lance = import_lance()
    corpus = Corpus.open(embeddings)
    if corpus.binary:
        raise InputError(f"{corpus.folder} holds ubinary embeddings; the lance kind indexes float "
                         "vectors: use --kind flat or --kind hnsw (faiss's binary indexes)")
    location = absolute(index_path)
    _refuse_inside(location, corpus)
    uri, options = lance_location(location)
    t0 = time.perf_counter()
    dim, rows = corpus.quant["dimensions"], corpus.rows
    if rows == 0:
        raise InputError(f"{corpus.folder} holds no vectors to index")
    params = default_params(rows, dim, nlist, m, nprobe, refine_factor)
    previous = read_meta(location)
    if previous is None and _exists(location):
        raise InputError(f"{redact(location)} exists and is not an index built here; pass a new --index path")
    batches = _batches(corpus, dim)
    first = next(batches)
    dataset = lance.write_dataset(
        pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches)), uri,
        mode="overwrite" if previous else "create", storage_options=options or None)
    t_write = time.perf_counter() - t0
    sample_rate = max(8, min(256, train_vectors // params["num_partitions"]))
    dataset.create_index("vector", "IVF_PQ", metric="dot" if corpus.metric == "ip" else "L2",
                         replace=True, num_partitions=params["num_partitions"],
                         num_sub_vectors=params["num_sub_vectors"], num_bits=params["num_bits"],
                         sample_rate=sample_rate, shuffle_partition_batches=SHUFFLE_BATCHES,
                         storage_options=options or None)
    if previous:
        dataset.cleanup_old_versions(older_than=datetime.timedelta(0))  # the replaced build
    meta = {"embeddings": str(corpus.folder), "kind": KIND, "metric": corpus.metric,
            "vectors": dataset.count_rows(), "dimensions": dim,
            "output_dtype": corpus.quant["output_dtype"], "params": params, "hnsw_m": None}
    _write_meta(location, meta)
    return {**meta, "seconds": time.perf_counter() - t0, "write_seconds": t_write,
            "index_bytes": _size(location), "sample_rate": sample_rate}


def _batches(corpus: Corpus, dim: int):
    """One record batch per part: id, vector, row (position in the output), shard, part_row, and
    a chunk output's chunk, char_start, char_end."""
    offset = 0
    for (shard_id, _), (keys, vectors) in zip(corpus.shards(), corpus.parts()):
        n = len(vectors)
        columns = {"id": keys.column("id").combine_chunks(),
                   "vector": pa.FixedSizeListArray.from_arrays(
                       pa.array(vectors.astype(np.float32, copy=False).ravel()), dim),
                   "row": pa.array(np.arange(offset, offset + n, dtype=np.int64)),
                   "shard": pa.array([shard_id] * n, pa.string()),
                   "part_row": pa.array(np.arange(n, dtype=np.int32))}
        columns.update({name: keys.column(name).combine_chunks() for name in keys.column_names[1:]})
        yield pa.record_batch(list(columns.values()), names=list(columns))
        offset += n


class _Spans:
    """A chunk index's (chunk, char_start, char_end) by row, read from the dataset on demand."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, row: int) -> tuple:
        found = self.dataset.take([row], columns=list(CHUNK_KEYS)).to_pylist()[0]
        return tuple(found[name] for name in CHUNK_KEYS)


def _refuse_inside(location: str, corpus: Corpus) -> None:
    fs, path = filesystem(location)
    if fs.type_name == corpus.folder.fs.type_name and (
            path == corpus.folder.path or path.startswith(corpus.folder.path.rstrip("/") + "/")):
        raise InputError(f"{redact(location)} is inside the embeddings folder {corpus.folder}; write "
                         "the index elsewhere (the pipeline owns that folder)")


def _exists(location) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _size(location) -> int:
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size for i in infos if i.is_file)


class LanceIndex:
    """A built Lance index, opened (nothing is loaded but the dataset's manifest): `meta` is
    the sidecar; `search` has the faiss `Index.search` contract."""

    def __init__(self, dataset, meta: dict):
        self.dataset, self.meta = dataset, meta
        chunks = set(CHUNK_KEYS) <= set(dataset.schema.names)
        self.spans = _Spans(dataset) if chunks else None  # as faiss `Index.spans`, for a chunk output

    @classmethod
    def load(cls, path, meta: dict | None = None) -> "LanceIndex":
        meta = meta or read_meta(path)
        if meta is None or meta.get("kind") != KIND:
            raise FileNotFoundError(f"{redact(absolute(path))}.json is missing or not a lance index's; "
                                    "build it with jobs/build_index.py --kind lance")
        uri, options = lance_location(absolute(path))
        return cls(import_lance().dataset(uri, storage_options=options or None), meta)

    def search(self, queries: np.ndarray, k: int, nprobe=None, ef_search=None) -> list[list[tuple]]:
        """Per query, up to `k` (id, score, row) best first, as faiss `Index.search`: score is the
        inner product (metric ip) or the squared L2 distance (l2); row is the position in the
        output (the faiss id). `nprobe`: partitions searched (default: the build's)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.meta["dimensions"])
        params = self.meta["params"]
        out = [[] for _ in range(len(queries))]
        if not len(queries):
            return out
        found = self.dataset.to_table(
            columns=["id", "row", "_distance"],
            nearest={"column": "vector", "q": queries if len(queries) > 1 else queries[0], "k": k,
                     "nprobes": nprobe or params["nprobes"], "refine_factor": params["refine_factor"] or None})
        which = found.column("query_index").to_numpy() if "query_index" in found.column_names \
            else np.zeros(found.num_rows, np.int64)
        distance = found.column("_distance").to_numpy()
        scores = 1.0 - distance if self.meta["metric"] == "ip" else distance
        for q, doc_id, score, row in zip(which, found.column("id").to_pylist(), scores,
                                         found.column("row").to_pylist()):
            out[q].append((doc_id, float(score), int(row)))
        for hits in out:  # best first: highest inner product, lowest L2
            hits.sort(key=lambda h: -h[1] if self.meta["metric"] == "ip" else h[1])
        return out
