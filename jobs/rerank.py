"""Retrieve with an index, then rerank the hits with a cross-encoder (or a Qwen3 reranker).

    python jobs/rerank.py --index out/demo/index.faiss --query "parse a date string" -k 100 \\
        --reranker ms-marco-MiniLM-L-6-v2/ -n 10
    python jobs/rerank.py --index out/demo/index.faiss --queries queries.parquet -k 100 \\
        --reranker ms-marco-MiniLM-L-6-v2/ -n 10 --output ranked.parquet

Retrieval is jobs/search.py's: each query is embedded with the engine options recorded in the
embeddings' manifest and searched in the index for its k nearest passages. Their texts are read
from the embeddings' input Parquet, and the reranker scores every (query, passage) pair
(`Engine(EngineConfig(model=FOLDER, task="score")).rerank`). Prints, per query, the best n:
rank, reranker score, id and passage. --output writes them all to one Parquet file: query_id,
query, rank, score (float32), id, retrieval_rank, retrieval_score, passage.
Exit codes: 0 done, 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli_help import in_flags, parser  # noqa: E402  (the script's folder)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout or a job's working dir
    sys.path.insert(0, str(ROOT))

# The script's own folder is first on sys.path, so its sibling imports by name (no copy of the
# retrieval code; `jobs` is not a package).
from search import open_index, passages, query_engine  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("rerank.py", __doc__)
    p.add_argument("--index", required=True,
                   help="index written by jobs/build_index.py: a faiss file, or a Lance index (folder or URI)")
    p.add_argument("--embeddings", default=None, help="embeddings folder (default: the one in PATH.json)")
    p.add_argument("--query", action="append", default=[], help="query text (repeat for several)")
    p.add_argument("--queries", default=None, help="Parquet file of queries (see --query-column)")
    p.add_argument("--query-column", default="query", help="column of --queries holding the text (default: query)")
    p.add_argument("--query-id-column", default=None,
                   help="column of --queries copied to the output's query_id (default: the row number)")
    p.add_argument("-k", type=int, default=100, help="passages retrieved per query and reranked (default: 100)")
    p.add_argument("--reranker", required=True,
                   help="cross-encoder folder (BERT/RoBERTa/XLM-R ForSequenceClassification, a "
                        "sentence-transformers CrossEncoder) or a Qwen3-Reranker folder")
    p.add_argument("-n", type=int, default=10, help="reranked passages printed / written per query (default: 10)")
    p.add_argument("--output", default=None, help="also write the reranked passages to this Parquet file")
    p.add_argument("--dtype", default="auto", help="reranker compute dtype: auto, float32, bfloat16, float16")
    p.add_argument("--max-length", type=int, default=None,
                   help="reranker tokens per (query, passage) pair (default: the folder's)")
    p.add_argument("--activation", default=None, choices=["sigmoid", "softmax", "identity"],
                   help="applied to the reranker's logit (default: as CrossEncoder.predict, e.g. sigmoid)")
    p.add_argument("--prompt", default=None,
                   help="literal retrieval query prompt (default: the embedding folder's 'query' prompt)")
    p.add_argument("--nprobe", type=int, default=None, help="ivfpq / lance lists to search (default: the index's)")
    p.add_argument("--ef-search", type=int, default=None, help="hnsw beam width (default: the index's)")
    p.add_argument("--chars", type=int, default=100, help="characters of each passage to print (default: 100)")
    parse_args.parser = p  # errors are put in its flags (cli_help.in_flags)
    args = p.parse_args(argv)
    if bool(args.query) == bool(args.queries):
        p.error("pass --query (one or more) or --queries FILE.parquet, not both")
    if args.k < 1 or args.n < 1:
        p.error("-k and -n must be positive")
    return args


def load_queries(args) -> tuple[list[str], list]:
    """(query texts, their ids): from --query (ids 0, 1, ...) or the --queries Parquet file."""
    if not args.queries:
        return list(args.query), list(range(len(args.query)))
    import pyarrow.parquet as pq
    names = pq.ParquetFile(args.queries).schema_arrow.names
    wanted = [c for c in (args.query_column, args.query_id_column) if c]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(f"column(s) {missing} not found in {args.queries}; its columns are {names} "
                         "(set --query-column / --query-id-column)")
    table = pq.read_table(args.queries, columns=wanted)
    texts = table.column(args.query_column).to_pylist()
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise ValueError(f"row {bad} of {args.queries} has no query text ({texts[bad]!r})")
    ids = table.column(args.query_id_column).to_pylist() if args.query_id_column else list(range(len(texts)))
    return texts, ids


def reranker_engine(args):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(model=args.reranker, task="score", dtype=args.dtype,
                               max_length=args.max_length, activation=args.activation))


def rerank_hits(reranker, query: str, hits: list[tuple], texts: dict, n: int) -> tuple[list[dict], int]:
    """The best `n` of a query's retrieval `hits` ((id, score, faiss id), best first) by the
    reranker, as output rows; and how many hits had no passage text (not reranked)."""
    found = [(rank, hit) for rank, hit in enumerate(hits, 1) if hit[0] in texts]
    ranked = reranker.rerank(query, [texts[hit[0]] for _, hit in found], top_k=n)
    rows = [{"rank": rank, "score": score, "id": found[i][1][0], "retrieval_rank": found[i][0],
             "retrieval_score": found[i][1][1], "passage": texts[found[i][1][0]]}
            for rank, (i, score) in enumerate(ranked, 1)]
    return rows, len(hits) - len(found)


def write_output(path: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    columns = ["query_id", "query", "rank", "score", "id", "retrieval_rank", "retrieval_score", "passage"]
    types = {"rank": pa.int32(), "score": pa.float32(), "retrieval_rank": pa.int32(),
             "retrieval_score": pa.float32(), "query": pa.string(), "passage": pa.string()}
    table = pa.table({c: pa.array([r[c] for r in rows], types.get(c)) for c in columns})
    pq.write_table(table, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        queries, query_ids = load_queries(args)
        reranker = reranker_engine(args)  # first: a folder that is no reranker fails fastest
        index, manifest = open_index(args.index, args.embeddings)
        embedder = query_engine(manifest, args.prompt)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"error: {in_flags(str(e), parse_args.parser)}", file=sys.stderr)
        return 2
    hits = index.search(embedder.embed(queries), args.k, args.nprobe, args.ef_search)
    texts, note = passages(manifest, sorted({h[0] for row in hits for h in row}, key=str))
    if not texts and any(hits):
        print(f"error: the reranker needs the passages' text: {note}", file=sys.stderr)
        return 2
    out, unread = [], 0
    for query_id, query, row in zip(query_ids, queries, hits):
        ranked, missing = rerank_hits(reranker, query, row, texts, args.n)
        unread += missing
        print(f"query: {query!r} ({len(row) - missing} of the {index.meta['kind']} index's top "
              f"{args.k} reranked by {Path(args.reranker).name})")
        for r in ranked:
            print(f"{r['rank']:>3}  {r['score']:7.4f}  {r['id']}  {r['passage'][:args.chars]!r}")
        out.extend({"query_id": query_id, "query": query, **r} for r in ranked)
    if unread:
        print(f"note: {unread} retrieved id(s) are no longer in the input Parquet; they were not reranked")
    if args.output:
        write_output(args.output, out)
        print(f"wrote {len(out):,} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
