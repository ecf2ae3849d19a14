"""Embed (or score, or classify) a corpus into Parquet/Arrow parts with a pool of engine actors on Ray.

On a cluster (here a local head; on a real one use its address):

    RAY_AUTH_MODE=disabled ray start --head --node-ip-address=127.0.0.1
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/embed_corpus.py --input /data/corpus/ --output /data/embeddings/

Alone (starts a local Ray):

    python jobs/embed_corpus.py --input 'corpus/*.parquet' --output embeddings/ --id-column doc_id
    python jobs/embed_corpus.py --demo        # sample corpus from Python docstrings (make demo)

Other tasks (parts hold `id, score` float32, or `id, logits, label`; see pipeline/tasks.py):

    python jobs/embed_corpus.py --task score --model cross-encoder/ --input pairs.parquet \\
        --text-column query --pair-column passage --output scores/
    python jobs/embed_corpus.py --task classify --model classifier/ --activation softmax \\
        --input corpus/ --output labels/

Token-level outputs (tokens: `id, tokens, num_tokens`; sparse: `id, indices, values`; bge-m3:
all of them plus `embedding`, from one forward pass; search them with jobs/search.py --embeddings):

    python jobs/embed_corpus.py --task tokens --model colbert/ --input corpus/ --output colbert-out/
    python jobs/embed_corpus.py --task sparse --model splade/ --input corpus/ --output splade-out/
    python jobs/embed_corpus.py --task bge-m3 --model bge-m3/ --allow-pickle --input corpus/ --output m3-out/

Chunk vectors of long documents (one row per chunk: `id, chunk, char_start, char_end,
embedding`; late chunking encodes each document once and pools each chunk's tokens, split
embeds each chunk alone; --spans-column takes the chunks from a column of [start, end] pairs):

    python jobs/embed_corpus.py --chunking late --chunk-tokens 256 --input docs/ --output chunks/
    python jobs/embed_corpus.py --chunking split --chunk-tokens 256 --chunk-overlap 32 --input docs/ --output split/

Rerunning with the same --output resumes. Exit codes (the table mapping each error type to
its code is `pipeline/errors.py::EXIT_CODES`):

    0  done: every input row is embedded in --output
    1  the run failed (a shard kept failing: e.g. disk full; every actor died or its node
       left the cluster); committed
       shards are kept, rerun the same command to resume
    2  bad arguments or input, found before any work (an unreachable Ray address, a missing
       column, non-string text without --cast, a model folder that cannot load, an output folder holding other files,
       bad rows with --on-bad-row error)
    3  --output holds a different run (another model, settings or input); --overwrite or a new folder
    4  done, but some rows are reported in --output/_errors.parquet (id, shard, row, reason):
       null, empty or whitespace-only texts (not embedded), rows that failed alone (each killed
       or failed its worker: not embedded, the rest of their shard is) and repeated ids (embedded)
  130  interrupted (Ctrl-C; 143 on SIGTERM): committed shards are kept, rerun to resume
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from cli_help import in_flags, parser

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout or a job's working dir
    sys.path.insert(0, str(ROOT))

DEMO_DIR = ROOT / "out" / "demo"
# pipeline.run's argument names whose flag is spelled otherwise (errors are put in flags)
FLAG_ALIASES = {"cast_text": "--cast", "max_num_batched_tokens": "--batch-tokens",
                "passthrough_columns": "--passthrough", "restart_timeout_s": "--restart-timeout"}


def _workers(value: str):
    """--num-workers: 'auto' (None to pipeline.run) or a positive integer."""
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a positive integer or 'auto'")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = parser("embed_corpus.py", __doc__, ("python", "RAY_AUTH"))
    p.epilog += "\n\nexit codes:\n" + __doc__[__doc__.index("    0  done"):]
    p.add_argument("--input", help="Parquet file, folder or glob (local or s3://, gs://...), "
                                   "or a datasets save_to_disk folder")
    p.add_argument("--output", help="output folder for the parts and _manifest.json; rerun to resume")
    p.add_argument("--task", default=None,
                   choices=["embed", "score", "classify", "tokens", "sparse", "bge-m3", "chunks"],
                   help="default: what the --model folder is (a sentence-transformers "
                        "CrossEncoder: score, or classify for several labels; SparseEncoder: "
                        "sparse; MultiVectorEncoder: tokens; else embed). embed: vectors; "
                        "score: a cross-encoder's (or Qwen3 reranker's) "
                        "relevance of each (--text-column, --pair-column) pair; classify: a "
                        "sequence classifier's logits and label; tokens: one vector per token "
                        "(a ColBERT / multi-vector folder's, else last hidden states; document "
                        "side); sparse: SPLADE vocabulary weights; bge-m3: dense + sparse + "
                        "multi-vector from one pass; chunks: one vector per chunk (set by --chunking)")
    p.add_argument("--text-column", default="text",
                   help="column holding the texts; the queries with --task score (default: text)")
    p.add_argument("--pair-column", default=None,
                   help="--task score only, required there: the column of passages paired with "
                        "each row's query")
    p.add_argument("--activation", default=None, choices=["sigmoid", "softmax", "identity"],
                   help="--task score/classify: applied to the logits (default: score as "
                        "CrossEncoder.predict does, e.g. sigmoid for one label; classify: raw logits)")
    p.add_argument("--id-column", default=None, help="column copied to the output id (default: global row index)")
    p.add_argument("--passthrough", nargs="*", default=(), metavar="COLUMN",
                   help="input columns copied unchanged into the output")
    p.add_argument("--model", default=None, help="model folder, local or a URI such as s3://bucket/models/x; each node "
                   "caches its own copy (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--address", default=None,
                   help="Ray cluster host:port, or 'local' for a new local Ray (default: RAY_ADDRESS, "
                        "else the cluster `ray start` recorded here, else a new local Ray)")
    p.add_argument("--restart-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up a worker whose restart Ray cannot place in this time (a lost "
                        "node); its shards go to the others (default: 180)")
    p.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="times a shard is redone after its worker died or it raised; then a shard "
                        "that still fails is narrowed down to the rows that fail alone, reported "
                        "as bad rows (default: 2; 0: the run stops at the first failure)")
    p.add_argument("--num-workers", type=_workers, default="auto", metavar="N|auto",
                   help="engine actors, or 'auto' (the default): one per GPU, else one per 8 CPU "
                   "cores at most, and nodes that join mid-run get workers too; a number is fixed")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch threads / reserved CPUs per CPU actor (default: an even split)")
    p.add_argument("--dtype", default="auto", help="engine compute dtype: auto (bfloat16 where the CPU or "
                   "GPU computes it fast, else float32), float32, bfloat16, float16")
    p.add_argument("--quantization", default=None, choices=["int8"],
                   help="int8 weights on CPU (SmoothQuant-calibrated; default: none)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="engine token budget per packed batch; lower it if a worker is killed for "
                        "memory (default: 4096 on CPU; on a GPU the largest that fits its memory)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's)")
    p.add_argument("--truncation", default="truncate", choices=["truncate", "error", "chunk"],
                   help="texts over --max-length: truncate (default, counted), error, or chunk "
                        "(overlapping windows, embedded and averaged by tokens)")
    p.add_argument("--chunk-overlap", type=int, default=None,
                   help="tokens shared by consecutive windows with --truncation chunk (default: 1/8 "
                        "window); with --chunking: tokens shared by consecutive chunks (default: 0)")
    p.add_argument("--chunking", default=None, choices=["late", "split"],
                   help="one output row per chunk of each text (--task chunks): late encodes each "
                        "text once (long ones in macro windows of --max-length overlapping by half) "
                        "and mean-pools each chunk's tokens; split embeds each chunk's text alone")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="with --chunking: tokens per chunk (default: 256); a cut inside a word moves "
                        "back to its start")
    p.add_argument("--spans-column", default=None,
                   help="with --chunking: a column of [char_start, char_end] pairs per text, the "
                        "chunks to embed (default: cut by --chunk-tokens)")
    p.add_argument("--profile-dir", default=None,
                   help="each worker writes a torch profiler trace of a few batches here (Chrome JSON)")
    p.add_argument("--shard-rows", type=int, default=None, help="rows per shard (default: sized from the corpus)")
    p.add_argument("--max-part-bytes", type=int, default=None,
                   help="--task tokens / bge-m3: plan shards so one part holds at most this many "
                        "bytes (worst-case estimate; default: 256 MiB)")
    p.add_argument("--output-format", default="parquet", choices=["parquet", "arrow"], help="part file format")
    p.add_argument("--output-dtype", default=None, choices=["float32", "float16", "int8", "ubinary"],
                   help="stored values: --task embed float32 (default), float16, int8 (calibrated "
                        "on a corpus sample) or ubinary (packed sign bits); --task tokens / bge-m3 "
                        "token vectors float16 (default) or float32; other tasks float32 only")
    p.add_argument("--dimensions", type=int, default=None,
                   help="Matryoshka: keep the first N dimensions (renormalized) before quantizing")
    p.add_argument("--on-bad-row", default=None, choices=["record", "error"],
                   help="a null, empty or whitespace-only text: record it in _errors.parquet and "
                        "go on (default; exit code 4), or stop the run (exit code 2)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="deprecated alias of --on-bad-row record (the default); refused together "
                        "with --on-bad-row error")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a model folder whose only weights are pickle files (pytorch_model.bin) "
                        "with torch.load(weights_only=True); default: refused (exit code 2)")
    p.add_argument("--cast", action="store_true",
                   help="cast a non-string text column (int, float, bool, binary) to string")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --output and start over")
    p.add_argument("--reuse", default=None, metavar="PATH",
                   help="incremental run: copy the rows whose text (and prompt) is unchanged from this "
                        "earlier output (local path or URI) instead of embedding them; it must have "
                        "been made with the same model and settings (README, \"Incremental runs\")")
    p.add_argument("--reuse-ignore-mismatch", action="store_true",
                   help="with --reuse: a previous output made with other settings is ignored (every "
                        "row embedded) instead of refused (exit code 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary table")
    p.add_argument("--summary-json", default=None, help="also write the run statistics to this JSON file")
    p.add_argument("--demo", action="store_true",
                   help="embed a sample corpus of Python docstrings into out/demo/ (the README's main job)")
    p.add_argument("--demo-rows", type=int, default=2000, help="passages in the --demo corpus (default: 2000)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.demo and not (args.input and args.output):
        p.error("--input and --output are required (or pass --demo)")
    derived = args.task is None
    if derived:  # the folder's kind decides; an unreadable folder is reported later
        from pipeline.inputs.validate import default_task
        chunks = args.chunking or args.chunk_tokens or args.spans_column
        args.task = "embed" if args.demo else "chunks" if chunks else \
            default_task(args.model, bool(args.allow_pickle))
    if args.task == "chunks" and not args.chunking:
        args.chunking = "late"
    if args.chunking and args.task != "chunks":
        p.error(f"--chunking embeds chunks (--task chunks); --task {args.task} does not take it")
    if args.task == "score" and not args.pair_column and not args.demo:
        p.error(("the --model folder is a cross-encoder, so the task is score: it " if derived else
                 "--task score ") + "needs --pair-column (the passages; --text-column is the query)")
    if args.pair_column and args.task != "score":
        p.error(f"--pair-column is for --task score; --task {args.task} reads --text-column only")
    if args.demo and args.task != "embed":
        p.error("--demo embeds the sample corpus; it takes no --task")
    if args.skip_bad_rows and args.on_bad_row == "error":
        p.error("--skip-bad-rows (record bad rows) contradicts --on-bad-row error; pass one")
    args.on_bad_row = args.on_bad_row or "record"
    return args


def build_demo_corpus(rows: int) -> Path:
    """Write `rows` docstring passages to out/demo/corpus.parquet (id, text); returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipeline.inputs.samples import sample_passages
    texts = sample_passages(rows, seed=0)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    path = DEMO_DIR / "corpus.parquet"
    ids = [f"doc-{i:06d}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=500)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C, and the SIGTERM of `ray job stop` and schedulers: exit through the driver's
    # cleanup, which saves the manifest (every finished shard stays committed) and stops the
    # actors, then print one line (no traceback) and exit 128 + the signal.
    received = []
    def interrupt(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        return _main(args)
    except KeyboardInterrupt as e:
        from pipeline.redact import redact
        print(redact(e) if str(e) else "interrupted before any shard was committed; rerun to start",
              file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)  # 130 (ExitCode.INTERRUPTED) or 143


def _main(args: argparse.Namespace) -> int:
    import pipeline
    from pipeline.errors import ExitCode, exit_code
    from pipeline.redact import redact
    if args.demo:
        t0 = time.perf_counter()
        args.input = str(build_demo_corpus(args.demo_rows))
        args.output, args.id_column, args.overwrite = str(DEMO_DIR / "embeddings"), "id", True
        print(f"demo corpus: {args.demo_rows:,} passages of Python docstrings -> {args.input} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    engine = {"dtype": args.dtype, "max_num_batched_tokens": args.batch_tokens, "max_length": args.max_length,
              "dimensions": args.dimensions, "allow_pickle": args.allow_pickle or None,
              "truncation": args.truncation, "chunk_overlap": args.chunk_overlap,
              "profile_dir": args.profile_dir, "activation": args.activation,
              "quantization": args.quantization, "chunking": args.chunking,
              "chunk_tokens": args.chunk_tokens}
    try:
        result = pipeline.run(
            args.input, output=args.output, model=args.model, text_column=args.text_column,
            id_column=args.id_column, num_workers=args.num_workers, task=args.task,
            pair_column=args.pair_column,
            **({"spans_column": args.spans_column} if args.spans_column else {}),
            threads_per_worker=args.threads_per_worker, shard_rows=args.shard_rows,
            passthrough_columns=tuple(args.passthrough), output_format=args.output_format,
            output_dtype=args.output_dtype, on_bad_row=args.on_bad_row, cast_text=args.cast,
            overwrite=args.overwrite, progress=not args.no_progress, address=args.address,
            **({"restart_timeout_s": args.restart_timeout} if args.restart_timeout else {}),
            **({"max_retries": args.max_retries} if args.max_retries is not None else {}),
            **({"max_part_bytes": args.max_part_bytes} if args.max_part_bytes else {}),
            **({"reuse": args.reuse} if args.reuse else {}),
            **({"reuse_mismatch": "ignore"} if args.reuse_ignore_mismatch else {}),
            **{k: v for k, v in engine.items() if v is not None})
    except Exception as e:
        code = exit_code(e)
        if code is None:  # not a failure the pipeline names: a bug, keep its traceback
            raise
        message = in_flags(redact(e), build_parser(), FLAG_ALIASES)  # the CLI's words, not Python's
        if code == ExitCode.FAILED:
            print(f"error: the run failed: {message}\nCommitted shards are kept; rerun the same command "
                  "to resume.", file=sys.stderr)
        else:
            print(f"error: {message}", file=sys.stderr)
        return code
    if args.summary_json:
        summary = result.stats.to_dict()
        if result.manifest and "reuse" in result.manifest.get("summary", {}):  # --reuse's counts
            summary["reuse"] = result.manifest["summary"]["reuse"]
        Path(args.summary_json).write_text(json.dumps(summary, indent=1))
    if args.demo:
        show_demo(result.output)
    if result.stats.isolated_rows:  # issue 24: a row that killed its worker is named
        rows = ", ".join(str(r) for r in result.stats.isolated_rows)
        print(f"warning: input row(s) {rows} failed alone (the worker died or raised on each) and "
              f"are not embedded; the rest of their shards is. Each error is in "
              f"{redact(result.output)}/_errors.parquet", file=sys.stderr)
    if result.stats.reported_rows:
        print(f"warning: {result.stats.bad_rows_total:,} row(s) not processed (bad text) and "
              f"{result.stats.duplicate_ids:,} row(s) with a repeated id are listed in "
              f"{redact(result.output)}/_errors.parquet", file=sys.stderr)
        return ExitCode.REPORTED
    return ExitCode.OK


def show_demo(output: str) -> None:
    """Read the demo's vectors back and show the nearest neighbours of one passage."""
    import numpy as np
    import pyarrow.parquet as pq
    import pipeline
    table = pipeline.read_embeddings(output)
    vectors = pipeline.to_numpy(table, dequantize=True)  # float32 whatever --output-dtype stored
    ids = table.column("id").to_pylist()
    texts = dict(zip(*pq.read_table(DEMO_DIR / "corpus.parquet", columns=["id", "text"]).to_pydict().values()))
    scores = vectors @ vectors[0]
    print(f"\nread back {vectors.shape[0]:,} x {vectors.shape[1]} vectors with pipeline.read_embeddings({output!r})")
    print(f"nearest neighbours of {ids[0]}: {texts[ids[0]][:90]!r}")
    for i in np.argsort(-scores)[1:4]:
        print(f"  {scores[i]:.3f}  {ids[i]}: {texts[ids[i]][:90]!r}")
    print(f"\nfiles: {output}/part-*.parquet, manifest {output}/_manifest.json, corpus {DEMO_DIR / 'corpus.parquet'}")


if __name__ == "__main__":
    sys.exit(main())
