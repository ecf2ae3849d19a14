"""Late vs split chunking (issue 27): recall@10 on long documents whose queries need the
document's context, with the same model and the same chunk spans.

    python benchmarks/bench_chunking.py                                  # 120 documents, chunks of 64 and 128
    python benchmarks/bench_chunking.py --documents 20 --chunk-tokens 64 # smoke

Held-out long documents from the sample corpus (the standard library's docstrings,
pipeline/inputs/samples.py): one document per module, "Module <dotted name>." followed by its
docstring paragraphs in file order, cut at --max-doc-tokens. Nothing is tuned on them. Queries:
for each document, up to --queries-per-doc paragraphs from its second half whose text does not
name the module; the query is "<module name>: <the paragraph's first sentence, at most 24
words>". The sentence alone is often generic ("Return a new ... object"), so finding the right
chunk needs to know which module the chunk belongs to: context only the document gives.

Both modes embed every document with the bundled all-MiniLM-L6-v2 (float32, max_length 256,
so documents over 256 tokens are late-chunked in macro windows) into the same spans
(`Engine.embed_chunks`, chunk_tokens as given, the same spans asserted equal); queries are
embedded by `Engine.embed`. A query's target is the chunk holding its paragraph's first
character. Exact search (cosine, all chunks of all documents): chunk recall@10 (the target
chunk is among the 10 best chunks) and document recall@10 (a chunk of the right document is),
and MRR of the target chunk.
"""
from __future__ import annotations

import importlib.util
import random
import re
import time

import numpy as np

import benchlib
from benchlib import ROOT


def _samples():
    spec = importlib.util.spec_from_file_location("_samples", ROOT / "pipeline" / "inputs" / "samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(n: int, seed: int, max_chars: int) -> list[tuple[str, str, list[int]]]:
    """(module name, document text, character start of each paragraph after the title)."""
    samples = _samples()
    root, skip = samples._roots()[0]
    out = []
    for path in samples._source_files(root, skip):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if name.startswith("_") or "._" in name:
            continue
        paras = [p for doc in samples._docstrings(path) for p in samples._paragraphs(doc)]
        if len(paras) < 8:
            continue
        text, starts = f"Module {name}.", []
        for p in paras:
            if len(text) + len(p) + 1 > max_chars:
                break
            starts.append(len(text) + 1)
            text += " " + p
        if len(starts) >= 8:
            out.append((name, text, starts))
    random.Random(seed).shuffle(out)
    return out[:n]


def queries(docs, per_doc: int, seed: int) -> list[tuple[str, int, int]]:
    """(query text, document index, character of the target paragraph's start)."""
    rng, out = random.Random(seed), []
    for d, (name, text, starts) in enumerate(docs):
        words = {w for w in re.split(r"[._]", name.lower()) if len(w) > 2}
        later = [s for s in starts[len(starts) // 2:]
                 if not any(w in text[s:s + 400].lower() for w in words | {name.lower()})]
        for s in rng.sample(later, min(per_doc, len(later))):
            end = text.find(". ", s)
            sentence = " ".join(text[s:end if end > s else s + 200].split()[:24])
            out.append((f"{name}: {sentence}", d, s))
    return out


def evaluate(chunks, qvecs, targets, k: int = 10) -> dict[str, float]:
    """chunk recall@k, document recall@k and MRR of the target chunk."""
    owner = np.concatenate([np.full(len(c), d) for d, c in enumerate(chunks)])
    spans = np.concatenate([np.array([(s, e) for s, e, _ in c]) for c in chunks])
    matrix = np.stack([v for c in chunks for *_, v in c])
    scores = qvecs @ matrix.T
    hits_chunk, hits_doc, rr = [], [], []
    for q, (d, char) in enumerate(targets):
        target = np.flatnonzero((owner == d) & (spans[:, 0] <= char) & (char < spans[:, 1]))[0]
        order = np.argsort(-scores[q])
        rank = int(np.flatnonzero(order == target)[0]) + 1
        hits_chunk.append(rank <= k)
        hits_doc.append(d in owner[order[:k]])
        rr.append(1.0 / rank)
    return {"chunk_recall": float(np.mean(hits_chunk)), "doc_recall": float(np.mean(hits_doc)),
            "mrr": float(np.mean(rr))}


def main() -> None:
    p = benchlib.parser("bench_chunking.py", __doc__)
    p.add_argument("--documents", type=int, default=120)
    p.add_argument("--queries-per-doc", type=int, default=2)
    p.add_argument("--max-doc-chars", type=int, default=4000, help="about 800-1000 tokens")
    p.add_argument("--chunk-tokens", type=int, nargs="+", default=[64, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from workers import Engine, EngineConfig
    docs = documents(args.documents, args.seed, args.max_doc_chars)
    qs = queries(docs, args.queries_per_doc, args.seed)
    chunker = Engine(EngineConfig(task="chunks", dtype="float32", num_threads=args.threads))
    embedder = Engine(EngineConfig(dtype="float32", num_threads=args.threads))
    qvecs = embedder.embed([q for q, _, _ in qs])
    targets = [(d, s) for _, d, s in qs]
    tokens = [len(chunker.processor._whole.encode(t, add_special_tokens=False).ids) for _, t, _ in docs]
    print(f"{benchlib.machine(args.threads)}\n{len(docs)} documents ({np.mean(tokens):.0f} tokens on "
          f"average, max {max(tokens)}; max_length {chunker.resolved.max_length}), {len(qs)} queries")
    print(f"{'chunk_tokens':>12} {'mode':>6} {'chunks':>7} {'chunk R@10':>10} {'doc R@10':>9} {'MRR':>6} {'seconds':>8}")
    for size in args.chunk_tokens:
        results = {}
        for mode in ("late", "split"):
            t0 = time.perf_counter()
            results[mode] = chunker.embed_chunks([t for _, t, _ in docs], chunk_tokens=size, chunking=mode)
            seconds = time.perf_counter() - t0
            m = evaluate(results[mode], qvecs, targets)
            print(f"{size:>12} {mode:>6} {sum(map(len, results[mode])):>7} {m['chunk_recall']:>10.3f} "
                  f"{m['doc_recall']:>9.3f} {m['mrr']:>6.3f} {seconds:>8.1f}", flush=True)
        same = all([(s, e) for s, e, _ in a] == [(s, e) for s, e, _ in b]
                   for a, b in zip(results["late"], results["split"]))
        assert same, "late and split chunking must embed the same spans"


if __name__ == "__main__":
    main()
