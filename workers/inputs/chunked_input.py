"""Chunk mode's input processor (truncation="chunk"): a text over max_length becomes windows.

A text that fits is tokenized exactly as by `TextInputProcessor`. Any other text's tokens
(without special tokens or prompt) are split into windows of `max_length - specials - prompt`
tokens that overlap by `chunk_overlap`, and each window gets the special tokens and the prompt
back. Such a text is tokenized in character slices cut at whitespace (`_SLICE_CHARS` each), so
memory stays bounded however long it is. Its windows are requests under the text's index; the
combiner (`workers/inputs/chunking.py`, this processor's `combiner`) folds their vectors back into one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .chunking import combine_windows
from .input_processor import _CHARS_PER_TOKEN, TextInputProcessor, Tokenized

_SLICE_CHARS = 1 << 16  # characters tokenized at a time from an over-long text


class ChunkedInputProcessor(TextInputProcessor):
    """Texts that fit as one request; longer texts as overlapping windows (see module doc)."""

    combiner = staticmethod(combine_windows)

    def __init__(self, path: Path, max_length: int, truncation: str = "chunk", prompt: str = "",
                 skip_instruction: bool = False, chunk_overlap: int | None = None):
        super().__init__(path, max_length, truncation, prompt, skip_instruction)
        self._prefix, self._suffix = self._special_layout()
        self.window = max_length - len(self._prefix) - len(self._prompt_ids) - len(self._suffix)
        if chunk_overlap is None:
            chunk_overlap = self.window // 8
        if not 0 <= chunk_overlap < self.window:
            raise ValueError(f"chunk_overlap={chunk_overlap} must be >= 0 and below the window of "
                             f"{self.window} tokens (max_length={max_length} minus special and "
                             "prompt tokens); lower chunk_overlap or raise max_length")
        self.chunk_overlap = chunk_overlap
        self._whole = Tokenizer.from_str(self._tok.to_str())  # a copy that never truncates
        self._whole.no_truncation()

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "ChunkedInputProcessor":
        return cls(path, resolved.max_length, config.truncation, prompt=resolved.prompt,
                   skip_instruction=resolved.skip_instruction, chunk_overlap=config.chunk_overlap)

    def fingerprint(self) -> dict:
        return {"chunk_overlap": self.chunk_overlap}

    def __call__(self, texts: list[str], first_index: int = 0) -> Tokenized:
        self._check_texts(texts, first_index)
        limit = self.max_length * _CHARS_PER_TOKEN
        short = [i for i, t in enumerate(texts) if len(t) <= limit]
        encs = dict(zip(short, self._encode([self.prompt + texts[i] for i in short]))) if short else {}
        ids, owners, windows = [], [], {}
        for i, text in enumerate(texts):
            enc = encs.get(i)
            if enc is not None and not enc.overflowing:
                ids.append(np.asarray(enc.ids, dtype=np.int64))
                owners.append(i)
                continue
            pieces = self._windows(self._content_ids(text))
            ids.extend(p for p, _ in pieces)
            owners.extend([i] * len(pieces))
            if len(pieces) > 1:  # one window (say, a long run of spaces) is an ordinary text
                windows[i] = [n for _, n in pieces]
        starts = [self._pool_start(x) for x in ids] if self.skip_instruction else None
        return Tokenized(ids, 0, starts, owners, windows)

    def _content_ids(self, text: str) -> np.ndarray:
        """The text's tokens without special tokens, tokenized `_SLICE_CHARS` characters at a
        time; each slice ends before a whitespace, so word pieces never straddle two slices."""
        parts, start = [], 0
        while start < len(text):
            end = start + _SLICE_CHARS
            if end < len(text):
                space = text.rfind(" ", start + _SLICE_CHARS // 2, end)
                end = space if space > start else end
            enc = self._whole.encode(text[start:end], add_special_tokens=False)
            parts.append(np.asarray(enc.ids, dtype=np.int64))
            start = end
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _windows(self, content: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """[(window ids with special tokens and prompt, content tokens in it)], in text order."""
        step = self.window - self.chunk_overlap
        head = np.concatenate([self._prefix, self._prompt_ids])
        out, start = [], 0
        while True:
            body = content[start:start + self.window]
            out.append((np.concatenate([head, body, self._suffix]), len(body)))
            if start + self.window >= len(content):
                return out
            start += step

    def _special_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(special ids before, special ids after) the content of one text, from a probe."""
        enc = self._tok.encode("a")
        mask = np.asarray(enc.special_tokens_mask, dtype=bool)
        ids = np.asarray(enc.ids, dtype=np.int64)
        content = np.flatnonzero(~mask)
        if len(content) == 0:
            return ids, np.zeros(0, dtype=np.int64)
        return ids[:content[0]], ids[content[-1] + 1:]
