"""Build an index (faiss, or Lance on disk / object storage) over the output of jobs/embed_corpus.py, one part at a time.

    python jobs/build_index.py --embeddings out/demo/embeddings --index out/demo/index.faiss
    python jobs/build_index.py --embeddings emb/ --index idx/hnsw.faiss --kind hnsw --hnsw-m 32
    python jobs/build_index.py --embeddings emb/ --index idx/ivfpq.faiss --kind ivfpq --nlist 1024 --m 48
    python jobs/build_index.py --embeddings s3://bucket/emb --index s3://bucket/idx.lance --kind lance

faiss kinds write PATH, PATH.ids.parquet (input id of each faiss id) and PATH.json (the
embeddings folder, kind, metric); --kind lance writes a Lance dataset PATH (a folder, or an
object-store URI) with an IVF-PQ index, and PATH.json beside it. Then prints build seconds,
vectors and index bytes. Needs faiss and pylance: `pip install '.[index]'`. Exit codes: 0
built, 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli_help import in_flags, parser  # noqa: E402  (the script's folder)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("build_index.py", __doc__)
    p.add_argument("--embeddings", required=True, help="output folder of pipeline.run (holds _manifest.json)")
    p.add_argument("--index", required=True,
                   help="index file to write (outside the embeddings folder); --kind lance: a folder "
                        "or an object-store URI (s3://bucket/idx.lance)")
    p.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivfpq", "lance"],
                   help="flat: exact; hnsw: graph; ivfpq: inverted lists of PQ codes (these three in "
                        "memory); lance: IVF-PQ in a Lance dataset on disk or object storage, for "
                        "corpora past one machine's memory (default: flat)")
    p.add_argument("--nlist", type=int, default=None,
                   help="ivfpq lists (default: ~4 sqrt(n)); lance partitions (default: ~sqrt(n))")
    p.add_argument("--m", type=int, default=None,
                   help="ivfpq / lance sub-quantizers, must divide dim (default: the largest divisor <= dim/8)")
    p.add_argument("--nbits", type=int, default=None,
                   help="ivfpq bits per code (default: 8, fewer on corpora under ~10k vectors)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="ivfpq / lance lists searched per query, stored in the index (default: ivfpq "
                        "nlist/8, >= 8; lance nlist/32, >= 20)")
    p.add_argument("--refine-factor", type=int, default=None,
                   help="lance: candidates per hit re-scored with the stored vectors (default: 10; 0: none)")
    p.add_argument("--train-rows", type=int, default=65_536, help="ivfpq training sample size (default: 65,536)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw neighbours per node (default: 32)")
    p.add_argument("--ef-construction", type=int, default=80, help="hnsw build beam width (default: 80)")
    p.add_argument("--ef-search", type=int, default=64,
                   help="hnsw search beam width stored in the index (default: 64)")
    p.add_argument("--threads", type=int, default=None,
                   help="faiss threads (default: one per core; 1 is faster on a busy machine)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline.index import build
    from pipeline.redact import redact
    try:
        stats = build(args.embeddings, args.index, args.kind, nlist=args.nlist, m=args.m,
                      nbits=args.nbits, nprobe=args.nprobe, train_rows=args.train_rows,
                      hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                      threads=args.threads, refine_factor=args.refine_factor)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {in_flags(str(e), parse_args.parser)}", file=sys.stderr)
        return 2
    params = "".join(f" {k}={v}" for k, v in stats["params"].items())
    print(f"built {stats['kind']} index ({stats['metric']}{params}) over {stats['vectors']:,} x "
          f"{stats['dimensions']} {stats['output_dtype']} vectors in {stats['seconds']:.2f} s: "
          f"{redact(args.index)} ({stats['index_bytes']:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
