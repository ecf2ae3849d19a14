"""The engine's chunk call (task="chunks"): one vector per chunk of each text, late or split.

Mixed into `Engine`. A call runs the same path as embed (tokenize -> schedule -> build -> run
per the execute loop) with the call's chunk processor (`workers/inputs/late_chunk_input.py`),
which records each document's layout before its requests are scheduled. Results come back in
batch order; a document is assembled once all its requests (macro windows, or chunk texts) are
back (the scheduler is FIFO and both loops keep batch order, so they arrive in order):

- late: the pieces' float32 sums of final hidden states, concatenated over its windows, give
  each chunk's mean over its token span (float64 prefix sums / token count); the span head's
  `post` then applies the folder's Dense/Normalize modules and Matryoshka truncation;
- split: each chunk text's vector, pooled by the folder's own pooler as `embed` does.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..heads.ragged import SPLITTERS
from ..inputs.chunk_spans import DocLayout


class ChunkOutputs:
    def embed_chunks(self, texts: list[str], chunk_tokens: int | None = None,
                     chunk_overlap: int | None = None, chunking: str | None = None,
                     spans: list | None = None) -> list[list[tuple[int, int, np.ndarray]]]:
        """Per text, its chunks as (char_start, char_end, float32 vector) in text order
        (task="chunks").

        chunking="late": each text is encoded once (up to max_length; longer ones in macro
        windows overlapping by half a window, every token taken from the window where it has the
        most context on both sides) and a chunk's vector is the mean of the final hidden states
        over its token span, then the folder's Dense/Normalize modules (whatever the folder's
        pooling: a span has no CLS or last token of its own). chunking="split": each chunk's text
        `text[char_start:char_end]` is embedded alone, exactly as `embed` would.

        Chunks: `chunk_tokens` tokens each (a cut inside a word moves back to its start), the
        next one starting `chunk_overlap` tokens before the previous one's end; their character
        spans cover the text with no gap. Or `spans`: per text a list of (char_start, char_end)
        pairs, the caller's chunks. None: the engine's config (chunk_tokens 256, overlap 0,
        chunking "late").

            engine = Engine(EngineConfig(task="chunks"))
            for start, end, vector in engine.embed_chunks([long_text], chunk_tokens=128)[0]:
                print(long_text[start:end][:40], vector[:3])
        """
        self._expect("chunks", "embed_chunks")
        texts = self._texts(texts, "embed_chunks")
        if spans is not None and (isinstance(spans, str) or len(spans) != len(texts)):
            raise ValueError(f"spans must hold one list of (char_start, char_end) pairs per text "
                             f"({len(texts)} texts)")
        base = self.processor
        processor = base.for_call(chunking or base.chunking, chunk_tokens or base.chunk_tokens,
                                  base.span_overlap if chunk_overlap is None else chunk_overlap)
        items = list(zip(texts, spans if spans is not None else [None] * len(texts)))
        out: list = [None] * len(texts)
        for index, layout, vectors in self._chunk_results(items, processor):
            out[index] = [(s, e, v) for (s, e), v in zip(layout.spans.tolist(), vectors)]
        return out

    def _chunk_results(self, items: list, processor) -> Iterator[tuple[int, DocLayout, np.ndarray]]:
        """(text index, its layout, its (K, width) chunk vectors) per text, as texts complete."""
        pending: dict[int, list] = {}
        for indices, result in self._run(items, processor):
            pieces = SPLITTERS["chunks"](result) if isinstance(result, dict) else list(result)
            done = []
            for index, piece in zip(indices.tolist(), pieces):
                got = pending.setdefault(index, [])
                got.append(piece)
                if len(got) == processor.layouts[index].requests:
                    done.append(index)
            layouts = [processor.layouts.pop(i) for i in done]
            yield from zip(done, layouts, self._assemble(layouts, [pending.pop(i) for i in done]))

    def _assemble(self, layouts: list[DocLayout], results: list[list]) -> list[np.ndarray]:
        """Chunk vectors of finished texts: split results are final; late piece sums become
        span means, run through the head's `post` together."""
        if not layouts or layouts[0].bounds is None:  # split: one pooled vector per chunk text
            return [np.stack(vectors).astype(np.float32, copy=False) for vectors in results]
        means = [_span_means(layout, np.concatenate(sums)) for layout, sums in zip(layouts, results)]
        flat = torch.from_numpy(np.concatenate(means)).to(self.builder.device)
        vectors = self.head.post(flat).cpu().numpy()
        return np.split(vectors, np.cumsum([len(m) for m in means])[:-1])


def _span_means(layout: DocLayout, sums: np.ndarray) -> np.ndarray:
    """(K, H) float32 means of the chunks' token spans from the pieces' (P, H) sums."""
    prefix = np.zeros((len(sums) + 1, sums.shape[1]), dtype=np.float64)
    np.cumsum(sums, axis=0, dtype=np.float64, out=prefix[1:])
    a, b = layout.chunks[:, 0], layout.chunks[:, 1]
    ja, jb = np.searchsorted(layout.bounds, a), np.searchsorted(layout.bounds, b)
    return ((prefix[jb] - prefix[ja]) / (b - a)[:, None]).astype(np.float32)
