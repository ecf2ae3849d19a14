"""Search an index built by jobs/build_index.py, or a token-level output, with a text query.

    python jobs/search.py --index out/demo/index.faiss --query "parse a date string" -k 5
    python jobs/search.py --index s3://bucket/idx.lance --query "parse a date string"   # kind lance
    python jobs/search.py --embeddings colbert/ --query "parse a date string"     # MaxSim
    python jobs/search.py --embeddings splade/ --query "parse a date string"      # sparse dot
    python jobs/search.py --embeddings m3/ --query "parse a date" --weights 0.4,0.2,0.4  # hybrid
    python jobs/search.py --embeddings splade/ --export-sparse splade.jsonl

With --index the query is embedded with the model and engine options recorded in the
embeddings' manifest (the folder is read from PATH.json, or --embeddings), with the model
folder's "query" prompt when it declares one. Without --index, --embeddings names a
task="tokens" / "sparse" / "bge-m3" output, searched exactly part by part (no index:
`pipeline/index/late_search.py`). Prints rank, id, score and, when the input Parquet is still
reachable, the passage. An index over a task="chunks" output (late or split chunking) finds
chunks: each hit prints the document id, the chunk's index and character span, and the
span's text. Exit codes: 0 done, 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli_help import in_flags, parser  # noqa: E402  (the script's folder)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Engine options that change the vectors; runtime ones (threads, batch sizes) are left default.
VECTOR_OPTIONS = ("model", "dtype", "max_length", "pooling", "normalize", "dimensions", "truncation",
                  "skip_instruction", "enable_bidirectional")
MUST_MATCH = ("model_hash", "pooling", "normalize", "dimensions", "workflow")
# A chunk output's workflow -> the embedding workflow its queries are embedded with (fingerprints
# leave out the encoder's name).
QUERY_WORKFLOWS = {"late_chunk": None, "decoder_late_chunk": "decoder",
                   "decoder_bidirectional_late_chunk": "decoder_bidirectional"}


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("search.py", __doc__)
    p.add_argument("--index", default=None,
                   help="index written by jobs/build_index.py (dense embeddings): a faiss file, or "
                        "a Lance index (folder or s3:// URI); omit it to "
                        "search a tokens / sparse / bge-m3 output given by --embeddings")
    p.add_argument("--embeddings", default=None,
                   help="with --index: the embeddings folder (default: the one in PATH.json); "
                        "without: a task tokens / sparse / bge-m3 output folder, searched exactly")
    p.add_argument("--query", action="append", help="query text (repeat for several)")
    p.add_argument("--weights", default="0.4,0.2,0.4",
                   help="bge-m3 outputs: dense,sparse,multi-vector weights of the hybrid score "
                        "(default: 0.4,0.2,0.4, the bge-m3 paper's)")
    p.add_argument("--export-sparse", default=None, metavar="OUT.jsonl",
                   help="write each row of a sparse or bge-m3 --embeddings output as a JSON line "
                        '{"id", "indices", "values"} and exit')
    p.add_argument("-k", type=int, default=5, help="hits per query (default: 5)")
    p.add_argument("--prompt", default=None, help="literal query prompt (default: the folder's 'query' prompt)")
    p.add_argument("--nprobe", type=int, default=None, help="ivfpq / lance lists to search (default: the index's)")
    p.add_argument("--ef-search", type=int, default=None, help="hnsw beam width (default: the index's)")
    p.add_argument("--chars", type=int, default=100, help="characters of each passage to print (default: 100)")
    parse_args.parser = p  # errors are put in its flags (cli_help.in_flags)
    args = p.parse_args(argv)
    if args.index is None and args.embeddings is None:
        p.error("pass --index (a faiss or Lance index) or --embeddings (a tokens / sparse / bge-m3 output)")
    if args.export_sparse and args.index:
        p.error("--export-sparse reads --embeddings (a sparse or bge-m3 output), not --index")
    if not args.query and not args.export_sparse:
        p.error("--query is required (repeat it for several queries)")
    try:
        args.weights = tuple(float(x) for x in args.weights.split(","))
    except ValueError:
        p.error(f"--weights {args.weights!r} must be three numbers, e.g. 0.4,0.2,0.4")
    return args


def query_engine(manifest: dict, prompt: str | None = None):
    """An engine giving queries the corpus's vector space (same model, pooling, dims, dtype)."""
    from workers import Engine, EngineConfig, query_prompt_name
    recorded = manifest.get("engine_options")
    if recorded is None:
        raise ValueError("the embeddings' _manifest.json records no engine_options (written by an "
                         "older pipeline); rerun jobs/embed_corpus.py into a new folder")
    options = {k: v for k, v in recorded.items() if k in VECTOR_OPTIONS}
    if prompt is not None:
        options["prompt"] = prompt
    elif query_prompt_name(options.get("model")):
        options["prompt_name"] = "query"
    engine = Engine(EngineConfig(**options))
    want, got = dict(manifest["fingerprint"]["engine"]), engine.fingerprint()
    if want.get("workflow") in QUERY_WORKFLOWS:  # chunk vectors: queries are plain embeddings
        want["workflow"] = QUERY_WORKFLOWS[want["workflow"]]
    diffs = [f"{k}: {want.get(k)!r} in the corpus, {got.get(k)!r} now" for k in MUST_MATCH if want.get(k) != got.get(k)]
    if diffs:
        raise ValueError("the query engine does not reproduce the corpus's vector space: " + "; ".join(diffs))
    return engine


def passages(manifest: dict, ids: list) -> tuple[dict, str]:
    """({id: text} for `ids` from the input Parquet, or {} and why not)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from pipeline.config import PipelineConfig
    from pipeline.inputs.sources import open_source
    fp, inputs = manifest["fingerprint"], manifest.get("input")
    if not inputs:
        return {}, "the input was not a file, so passages are not shown"
    text_col, id_col = fp["text_column"], fp["id_column"]
    try:
        data = inputs[0] if len(inputs) == 1 else [Path(p) for p in inputs]
        source = open_source(data, PipelineConfig(text_column=text_col, id_column=id_col))
        dataset = ds.dataset(source.paths, filesystem=source.filesystem, format="parquet")
    except (AttributeError, ValueError, FileNotFoundError, OSError) as e:
        return {}, f"passages not shown: the input {inputs[0]} cannot be read ({e})"
    if id_col is None:  # ids are global row numbers
        table = dataset.take(pa.array(ids, type=pa.int64()), columns=[text_col])
        return dict(zip(ids, table.column(text_col).to_pylist())), ""
    table = dataset.to_table(columns=[id_col, text_col], filter=pc.field(id_col).isin(ids))
    return dict(zip(table.column(id_col).to_pylist(), table.column(text_col).to_pylist())), ""


def open_index(index_path, embeddings=None):
    """(the loaded `pipeline.index.Index`, the manifest dict of the embeddings it was built from:
    `embeddings`, else the folder named in the index's PATH.json)."""
    from pipeline.index import Index
    from pipeline.output.manifest import Manifest
    from pipeline.output.output_folder import OutputFolder
    index = Index.load(index_path)
    folder = embeddings or index.meta["embeddings"]
    loaded = Manifest.load(OutputFolder.open(folder))
    if loaded is None:
        raise FileNotFoundError(f"{folder} has no _manifest.json: pass --embeddings with the "
                                "folder the index was built from")
    return index, loaded.data


def late_search(args) -> int:
    """Exact search (or --export-sparse) over a tokens / sparse / bge-m3 output."""
    from pipeline import late_search as late
    from pipeline.errors import InputError
    try:
        if args.export_sparse:
            rows = late.export_sparse(args.embeddings, args.export_sparse)
            print(f"wrote {rows:,} sparse vectors to {args.export_sparse}")
            return 0
        _, manifest, task = late.open_output(args.embeddings)
        hits = late.search(args.embeddings, args.query, args.k, args.weights)
    except (InputError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {in_flags(str(e), parse_args.parser)}", file=sys.stderr)
        return 2
    texts, note = passages(manifest.data, sorted({h.id for row in hits for h in row}, key=str))
    mode = late.MODES[task] + (f" {','.join(map(str, args.weights))}" if task == "bge-m3" else "")
    for query, row in zip(args.query, hits):
        print(f"query: {query!r} ({task} output, exact {mode}, {sum(r['rows'] for r in manifest.shards.values()):,} rows)")
        for rank, hit in enumerate(row, 1):
            text = texts.get(hit.id)
            print(f"{rank:>3}  {hit.score:7.4f}  {hit.id}" + (f"  {text[:args.chars]!r}" if text else ""))
    if note:
        print(note)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.index is None:
        return late_search(args)
    try:
        index, manifest = open_index(args.index, args.embeddings)
        engine = query_engine(manifest, args.prompt)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {in_flags(str(e), parse_args.parser)}", file=sys.stderr)
        return 2
    hits = index.search(engine.embed(args.query), args.k, args.nprobe, args.ef_search)
    texts, note = passages(manifest, sorted({h[0] for row in hits for h in row}, key=str))
    for query, row in zip(args.query, hits):
        print(f"query: {query!r} ({index.meta['kind']} index, {index.meta['metric']}, "
              f"{index.meta['vectors']:,} {'chunk ' if index.spans else ''}vectors)")
        for rank, (doc_id, score, row_id) in enumerate(row, 1):
            text, where = texts.get(doc_id), ""
            if index.spans:  # a chunk: its document id, index and text span
                chunk, start, end = index.spans[row_id]
                where = f"  chunk {chunk} [{start}:{end}]"
                text = text[start:end] if text else text
            print(f"{rank:>3}  {score:7.4f}  {doc_id}{where}" + (f"  {text[:args.chars]!r}" if text else ""))
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
