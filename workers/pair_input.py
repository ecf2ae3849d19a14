"""The text-pair input processor: (query, document) pairs for cross-encoders.

A pair is encoded exactly as the model's tokenizer encodes a pair (`tokenizer(q, d)` in
transformers): BERT `[CLS] q [SEP] d [SEP]` with token type ids 0 then 1, RoBERTa/XLM-R
`<s> q </s></s> d </s>`; both come from the tokenizer.json post-processor. A pair over
max_length is cut like transformers' `truncation="longest_first"` (the Rust tokenizer's own pair
truncation: tokens come off the longer side first). Each side is cut by characters first, as
single texts are, but only to a prefix that still holds at least max_length tokens, which
leaves longest_first's result unchanged as long as the other side is shorter than max_length.
When both sides hold max_length tokens or more, which one is longer decides who keeps the odd
token, so such a pair is tokenized whole (rare, and linear in its length).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .input_processor import _CHARS_PER_TOKEN, InputProcessor, TextTooLongError, Tokenized


class PairInputProcessor(InputProcessor):
    """(text, text_pair) per request, with per-token type ids."""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate"):
        super().__init__(path, max_length, truncation)
        self._tok.enable_truncation(max_length, strategy="longest_first")
        self._count = Tokenizer.from_str(self._tok.to_str())  # a copy that never truncates
        self._count.no_truncation()

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "PairInputProcessor":
        return cls(path, resolved.max_length, config.truncation)

    def __call__(self, pairs: list[tuple[str, str]], first_index: int = 0) -> Tokenized:
        check_pairs(pairs, first_index)
        limit = self.max_length * _CHARS_PER_TOKEN
        encs = self._encode([self._cut_pair(a, b, limit) for a, b in pairs])
        truncated = 0
        for i, enc in enumerate(encs):
            if enc.overflowing:
                if self.truncation == "error":
                    raise TextTooLongError(first_index + i, self.max_length, "pair",
                                           "truncation='truncate'")
                truncated += 1
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        types = [np.asarray(e.type_ids, dtype=np.int64) for e in encs]
        return Tokenized(ids, truncated, type_ids=types)

    def _cut_pair(self, a: str, b: str, limit: int) -> tuple[str, str]:
        """(a, b) cut by characters where that cannot change the truncated encoding."""
        ca, cb = self._side(a, limit), self._side(b, limit)
        if ca is a and cb is b:
            return a, b
        long_a = ca is not a or self._tokens(a) >= self.max_length  # a cut side always is
        long_b = cb is not b or self._tokens(b) >= self.max_length
        return (a, b) if long_a and long_b else (ca, cb)

    def _tokens(self, text: str) -> int:
        return len(self._count.encode(text, add_special_tokens=False).ids)

    def _side(self, text: str, limit: int) -> str:
        """`text`, or a whitespace-cut prefix of it that still has >= max_length tokens."""
        while len(text) > limit:
            cut = self._cut(text, limit)
            if self._tokens(cut) >= self.max_length:
                return cut
            limit *= 4
        return text


def check_pairs(pairs, first_index: int) -> None:
    """TypeError naming the first item that is not a (str, str) pair."""
    if isinstance(pairs, (str, tuple)):
        raise TypeError("pass a list of (query, document) pairs; wrap a single pair as [(q, d)]")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"item at index {first_index + i} is {_describe(pair)}, not a pair of "
                            "two strings; pass (query, document) tuples of str")


def _describe(item) -> str:
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of ({', '.join(type(t).__name__ for t in item)})"
    return type(item).__name__
