"""Input processors of task="chunks": documents in, one vector per chunk out (see
`chunk_spans.py` for how chunks, macro windows and pieces are laid out).

Items are `(text, spans)` pairs: `spans` None cuts chunks of `chunk_tokens` tokens sharing
`chunk_overlap`; else the caller's (char_start, char_end) pairs. Each processor records the
layout of every document it tokenizes in `layouts` (global index -> `DocLayout`) before any of
its requests is scheduled; the engine reads it as the results come back
(`workers/engine/chunk_outputs.py`).

- `LateChunkInputProcessor` (chunking="late"): a document is one request (its special tokens,
  the prompt, its content tokens), or macro windows of `max_length` when it is longer; each
  request carries per-token `segments`: the piece (local index) a token is pooled into, -1 for
  special and prompt tokens and for tokens another window owns. The span head sums the final
  hidden states of each piece.
- `SplitChunkInputProcessor` (chunking="split"): each chunk's text `text[char_start:char_end]`
  is one request, tokenized exactly as `Engine.embed` tokenizes a text (prompt, truncation at
  max_length), so its vector is the folder's own pooling of the chunk alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .chunk_spans import (DocLayout, DocTokens, char_spans, check_spans, content_tokens,
                          macro_windows, pieces, spans_to_tokens, token_chunks)
from .chunked_input import ChunkedInputProcessor
from .input_processor import TextInputProcessor, Tokenized

CHUNKINGS = ("late", "split")


class ChunkSpanProcessor(ChunkedInputProcessor):
    """What both chunking modes share: settings, the document's tokens and its chunk spans."""

    combiner = None  # chunk vectors are assembled by the engine's embed_chunks, not a combiner
    chunking = ""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate", prompt: str = "",
                 skip_instruction: bool = False, chunk_tokens: int = 256, chunk_overlap: int = 0):
        super().__init__(path, max_length, truncation, prompt, skip_instruction, chunk_overlap=0)
        self.chunk_tokens, self.span_overlap = check_chunking(chunk_tokens, chunk_overlap)
        self.layouts: dict[int, DocLayout] = {}

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "ChunkSpanProcessor":
        mode = CHUNKING_PROCESSORS[config.chunking or "late"]
        return mode(path, resolved.max_length, config.truncation, prompt=resolved.prompt,
                    skip_instruction=resolved.skip_instruction, chunk_tokens=config.chunk_tokens or 256,
                    chunk_overlap=config.chunk_overlap or 0)

    def fingerprint(self) -> dict:
        return {"chunking": self.chunking, "chunk_tokens": self.chunk_tokens,
                "chunk_overlap": self.span_overlap}

    def for_call(self, chunking: str, chunk_tokens: int, chunk_overlap: int) -> "ChunkSpanProcessor":
        """A processor for one `embed_chunks` call: this one's tokenizer and prompt, the call's
        mode and chunk sizes, and layouts of its own."""
        if chunking not in CHUNKING_PROCESSORS:
            raise ValueError(f"chunking={chunking!r} is not supported; choose one of {list(CHUNKINGS)}")
        mode = CHUNKING_PROCESSORS[chunking]
        out = mode.__new__(mode)
        out.__dict__.update(self.__dict__)
        out.chunk_tokens, out.span_overlap = check_chunking(chunk_tokens, chunk_overlap)
        out.layouts = {}
        return out

    def _documents(self, items: list, first_index: int):
        """(global index, text, tokens, chunk token ranges (K, 2), character spans (K, 2)) per item."""
        for i, item in enumerate(items):
            index = first_index + i
            text, spans = item if isinstance(item, tuple) else (item, None)
            if not isinstance(text, str):
                raise TypeError(f"text at index {index} is {type(text).__name__}, not str; pass "
                                "strings only (drop or fill missing texts first)")
            tokens = content_tokens(self._whole, text)
            if spans is None:
                chunks = token_chunks(tokens, self.chunk_tokens, self.span_overlap)
                if chunks[0, 1] == 0:
                    raise ValueError(f"text at index {index} has no tokens to chunk (empty, or only "
                                     "characters the tokenizer drops); drop it")
                spans = char_spans(tokens, chunks, len(text))
            else:
                spans = check_spans(spans, len(text), index)
                chunks = spans_to_tokens(tokens, spans, index)
            yield index, text, tokens, chunks, spans


class LateChunkInputProcessor(ChunkSpanProcessor):
    """chunking="late": whole documents (macro windows when long) with per-token pieces."""

    chunking = "late"

    def __call__(self, items: list, first_index: int = 0) -> Tokenized:
        ids, owners, segments = [], [], []
        head = np.concatenate([self._prefix, self._prompt_ids])
        for index, _, tokens, chunks, spans in self._documents(items, first_index):
            starts, owned = macro_windows(len(tokens), self.window)
            bounds = pieces(chunks, owned, len(tokens))
            for m, start in enumerate(starts.tolist()):
                window_ids, segment = self._window(tokens, start, owned[m], owned[m + 1], bounds, head)
                ids.append(window_ids)
                segments.append(segment)
                owners.append(index - first_index)
            self.layouts[index] = DocLayout(chunks, spans, bounds, len(starts))
        return Tokenized(ids, 0, None, owners, None, segments=segments)

    def _window(self, tokens: DocTokens, start: int, lo: int, hi: int, bounds: np.ndarray,
                head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, segments) of the window at `start` that owns tokens [lo, hi)."""
        body = tokens.ids[start:start + self.window]
        ids = np.concatenate([head, body, self._suffix])
        segment = np.full(len(ids), -1, dtype=np.int64)
        j0, j1 = np.searchsorted(bounds, [lo, hi])
        local = np.repeat(np.arange(j1 - j0, dtype=np.int64), np.diff(bounds[j0:j1 + 1]))
        segment[len(head) + lo - start:len(head) + hi - start] = local
        return ids, segment


class SplitChunkInputProcessor(ChunkSpanProcessor):
    """chunking="split": every chunk's text is a request of its own, tokenized as embed does."""

    chunking = "split"

    def __call__(self, items: list, first_index: int = 0) -> Tokenized:
        texts, owners = [], []
        for index, text, _, chunks, spans in self._documents(items, first_index):
            texts.extend(text[s:e] for s, e in spans.tolist())
            owners.extend([index - first_index] * len(spans))
            self.layouts[index] = DocLayout(chunks, spans, None, len(spans))
        tok = TextInputProcessor.__call__(self, texts, first_index)
        tok.owners = owners
        return tok


CHUNKING_PROCESSORS = {"late": LateChunkInputProcessor, "split": SplitChunkInputProcessor}


def check_chunking(chunk_tokens, chunk_overlap) -> tuple[int, int]:
    """(chunk_tokens, chunk_overlap) validated: 1 <= chunk_tokens, 0 <= overlap < chunk_tokens."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens!r} must be a positive integer")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) \
            or not 0 <= chunk_overlap < chunk_tokens:
        raise ValueError(f"chunk_overlap={chunk_overlap!r} must be an integer >= 0 and below "
                         f"chunk_tokens={chunk_tokens}")
    return chunk_tokens, chunk_overlap
