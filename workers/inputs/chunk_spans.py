"""Chunk spans of a document (task="chunks"), on the host: token ranges, character spans, macro
windows and the pieces the span head sums.

A document's content tokens (no special tokens, no prompt) are numbered 0..N-1 with their
character offsets from the fast tokenizer. Chunks are token ranges [a, b):

- from counts (`token_chunks`): `chunk_tokens` tokens each, consecutive chunks sharing
  `chunk_overlap`; a cut inside a word moves back to the word's first token (so a chunk may hold
  fewer tokens, never more), unless that would leave the chunk empty. Character spans: chunk
  [a, b) runs from token a's start (0 for the first chunk) to token b's start (the text's end
  for the last chunk), so the spans cover the text with no gap (whitespace between chunks
  belongs to the chunk before it);
- from the caller's character spans (`spans_to_tokens`): the tokens that start inside the span
  (else, for a span inside one token, the tokens it overlaps). A span holding no token is an error.

A document longer than the engine's window (`max_length` minus special and prompt tokens)
is encoded in macro windows (`macro_windows`) of the full window, overlapping by half of it;
each token is owned by (pooled from) the window whose center is nearest, which is the window
giving it the most context on both sides: context(t, w) = min(t - start_w, end_w - 1 - t) =
(W - 1) / 2 - |t - center_w| for windows of equal width W. Ties go to the earlier window.

Pieces (`pieces`): the token axis cut at every chunk bound and every ownership bound, so each
piece lies in one window and in a fixed set of chunks. The head returns one float32 sum per
piece; a chunk's mean is the sum of its pieces' sums over its token count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

SLICE_CHARS = 1 << 16  # characters tokenized at a time from a long document


@dataclass
class DocTokens:
    """A document's content tokens: ids (N,) int64, character starts/ends (N,) int64, and
    `joined` (N,) bool: the token continues the previous token's word."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    joined: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DocLayout:
    """What the host needs to turn a document's piece sums into chunk vectors."""

    chunks: np.ndarray        # (K, 2) int64 token ranges [a, b)
    spans: np.ndarray         # (K, 2) int64 character spans [start, end)
    bounds: np.ndarray        # (P+1,) int64 piece bounds on the token axis (late chunking)
    requests: int             # requests (windows, or span texts) the document was sent as


def content_tokens(tokenizer: Tokenizer, text: str, slice_chars: int = SLICE_CHARS) -> DocTokens:
    """Tokenize `text` without special tokens, `slice_chars` characters at a time (each slice
    ends before a space, so no word straddles two slices); `tokenizer` must not truncate."""
    ids, starts, ends, joined, start = [], [], [], [], 0
    while start < len(text):
        end = start + slice_chars
        if end < len(text):
            space = text.rfind(" ", start + slice_chars // 2, end)
            end = space if space > start else end
        enc = tokenizer.encode(text[start:end], add_special_tokens=False)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + start
        words = enc.word_ids
        ids.append(np.asarray(enc.ids, dtype=np.int64))
        starts.append(offsets[:, 0])
        ends.append(offsets[:, 1])
        joined.append(np.array([i > 0 and w is not None and w == words[i - 1]
                                for i, w in enumerate(words)], dtype=bool))
        start = end
    if not ids:
        empty = np.zeros(0, dtype=np.int64)
        return DocTokens(empty, empty, empty, np.zeros(0, dtype=bool))
    return DocTokens(*(np.concatenate(x) for x in (ids, starts, ends, joined)))


def token_chunks(tokens: DocTokens, chunk_tokens: int, chunk_overlap: int) -> np.ndarray:
    """(K, 2) token ranges of `chunk_tokens` tokens sharing `chunk_overlap` (see module doc);
    one empty range for a document with no tokens."""
    n = len(tokens)
    out, a = [], 0
    while True:
        b = min(a + chunk_tokens, n)
        if b < n:
            cut = b
            while cut > a + 1 and tokens.joined[cut]:
                cut -= 1
            b = cut if not tokens.joined[cut] else b
        out.append((a, b))
        if b >= n:
            return np.asarray(out, dtype=np.int64).reshape(-1, 2)
        nxt = b - chunk_overlap
        while chunk_overlap and nxt > a + 1 and tokens.joined[nxt]:
            nxt -= 1
        a = max(nxt, a + 1)


def char_spans(tokens: DocTokens, chunks: np.ndarray, text_length: int) -> np.ndarray:
    """(K, 2) character spans of token-count chunks: covering [0, text_length) with no gap."""
    starts = np.append(tokens.starts, text_length)
    spans = np.stack([starts[chunks[:, 0]], starts[chunks[:, 1]]], axis=1)
    spans[0, 0] = 0
    spans[-1, 1] = text_length
    return spans


def check_spans(spans, text_length: int, index: int) -> np.ndarray:
    """The caller's spans of text `index` as (K, 2) int64; ValueError naming the text and span
    unless every span is a pair 0 <= start < end <= len(text)."""
    try:
        out = np.asarray([(int(s), int(e)) for s, e in spans], dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise ValueError(f"spans of text {index} must be a list of (char_start, char_end) integer "
                         f"pairs, got {spans!r:.200}") from None
    if not len(out):
        raise ValueError(f"text {index} has no spans; give at least one (char_start, char_end) "
                         "or pass spans=None to cut chunks by token counts")
    bad = np.flatnonzero((out[:, 0] < 0) | (out[:, 0] >= out[:, 1]) | (out[:, 1] > text_length))
    if len(bad):
        s, e = out[bad[0]]
        raise ValueError(f"span {bad[0]} ({s}, {e}) of text {index} is not within the text "
                         f"(0 <= start < end <= {text_length})")
    return out


def spans_to_tokens(tokens: DocTokens, spans: np.ndarray, index: int) -> np.ndarray:
    """(K, 2) token ranges of the caller's character spans (see module doc)."""
    a = np.searchsorted(tokens.starts, spans[:, 0], "left")
    b = np.searchsorted(tokens.starts, spans[:, 1], "left")
    empty = np.flatnonzero(a >= b)
    for k in empty:  # a span inside one token: the tokens it overlaps
        a[k] = np.searchsorted(tokens.ends, spans[k, 0], "right")
        b[k] = max(b[k], a[k])
        if a[k] >= b[k]:
            raise ValueError(f"span {k} ({spans[k, 0]}, {spans[k, 1]}) of text {index} holds no "
                             "token (whitespace or characters the tokenizer drops); widen or drop it")
    return np.stack([a, b], axis=1).astype(np.int64)


def macro_windows(n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts (M,), ownership bounds (M+1,)) of the macro windows over `n` content tokens: one
    window when they fit, else windows of `window` tokens every `window - window // 2` tokens,
    the last ending at `n`; window m owns tokens [bounds[m], bounds[m+1]) (nearest center)."""
    if n <= window:
        return np.zeros(1, dtype=np.int64), np.array([0, n], dtype=np.int64)
    stride = window - window // 2
    starts = list(range(0, n - window, stride)) + [n - window]
    starts = np.asarray(sorted(set(starts)), dtype=np.int64)
    # token t goes to window m while t <= (center_m + center_{m+1}) / 2, centers s + (W - 1) / 2
    mids = (starts[:-1] + starts[1:] + window - 1) // 2 + 1
    return starts, np.concatenate([[0], mids, [n]]).astype(np.int64)


def pieces(chunks: np.ndarray, owned: np.ndarray, n: int) -> np.ndarray:
    """(P+1,) sorted bounds of the pieces over [0, n): every chunk and ownership bound."""
    cuts = np.concatenate([chunks.reshape(-1), owned, [0, n]])
    return np.unique(np.clip(cuts, 0, n))
