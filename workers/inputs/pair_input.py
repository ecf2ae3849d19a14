"""The text-pair input processor: (query, document) pairs for cross-encoders.

A pair is encoded exactly as the model's tokenizer encodes a pair (`tokenizer(q, d)` in
transformers): BERT `[CLS] q [SEP] d [SEP]` with token type ids 0 then 1, RoBERTa/XLM-R
`<s> q </s></s> d </s>`; both come from the tokenizer.json post-processor. A pair over
max_length is cut like transformers' `truncation="longest_first"` (the Rust tokenizer's own pair
truncation: tokens come off the longer side first).

Memory is bounded by max_length whatever the input (issue 24): a pair is never handed to the
truncating tokenizer whole. The Rust tokenizer builds every overflowing window of a truncated
pair, (tokens of q / budget) x (tokens of d / budget) of them: a (60k, 60k)-character pair took
21 GB. So each side is first cut by characters, as single texts are, to a whitespace prefix that
still holds at least max_length tokens. When only one side is cut, longest_first on the cut
pair gives the same ids (the cut side is still the longer). When both sides hold max_length
tokens or more, longest_first gives each half the budget, and the longer side keeps the odd
token; which side is longer is counted a window of characters at a time (bounded memory, linear
time), and the two halves are cut from the prefixes here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .input_processor import _CHARS_PER_TOKEN, InputProcessor, TextTooLongError, Tokenized

_COUNT_WINDOW = 64  # a side is counted max_length * _CHARS_PER_TOKEN * _COUNT_WINDOW characters at a time


class PairInputProcessor(InputProcessor):
    """(text, text_pair) per request, with per-token type ids."""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate"):
        super().__init__(path, max_length, truncation)
        self._tok.enable_truncation(max_length, strategy="longest_first")
        self._count = Tokenizer.from_str(self._tok.to_str())  # a copy that never truncates
        self._count.no_truncation()
        self._budget = max_length - self._tok.num_special_tokens_to_add(is_pair=True)

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "PairInputProcessor":
        return cls(path, resolved.max_length, config.truncation)

    def __call__(self, pairs: list[tuple[str, str]], first_index: int = 0) -> Tokenized:
        check_pairs(pairs, first_index)
        limit = self.max_length * _CHARS_PER_TOKEN
        items = [self._cut_pair(a, b, limit) for a, b in pairs]
        plain = [i for i, item in enumerate(items) if isinstance(item, tuple)]
        encs = list(items)  # both-long pairs are encoded already; the others in one batch call
        for i, enc in zip(plain, self._encode([items[i] for i in plain]) if plain else []):
            encs[i] = enc
        truncated = 0
        for i, enc in enumerate(encs):
            if enc.overflowing or not isinstance(items[i], tuple):
                if self.truncation == "error":
                    raise TextTooLongError(first_index + i, self.max_length, "pair",
                                           "truncation='truncate'")
                truncated += 1
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        types = [np.asarray(e.type_ids, dtype=np.int64) for e in encs]
        return Tokenized(ids, truncated, type_ids=types)

    def _cut_pair(self, a: str, b: str, limit: int):
        """(a, b) cut by characters where that cannot change the truncated encoding, or the
        finished encoding of a pair whose sides both hold max_length tokens or more."""
        ca, cb = self._side(a, limit), self._side(b, limit)
        if ca is a and cb is b:
            return a, b
        long_a = ca is not a or self._tokens(a) >= self.max_length  # a cut side always is
        long_b = cb is not b or self._tokens(b) >= self.max_length  # (an uncut one is short)
        return self._both_long(a, b, ca, cb) if long_a and long_b else (ca, cb)

    def _both_long(self, a: str, b: str, ca: str, cb: str):
        """longest_first of a pair whose sides both exceed the budget: half of it each, the odd
        token to the side with more tokens (the second on a tie), taken from the prefixes."""
        first = self._budget // 2
        if self._budget % 2 and self._long_tokens(a) > self._long_tokens(b):
            first += 1
        enc_a = self._count.encode(ca, add_special_tokens=False)
        enc_b = self._count.encode(cb, add_special_tokens=False)
        enc_a.truncate(first)
        enc_b.truncate(self._budget - first)
        return self._count.post_process(enc_a, enc_b, add_special_tokens=True)

    def _tokens(self, text: str) -> int:
        return len(self._count.encode(text, add_special_tokens=False).ids)

    def _long_tokens(self, text: str) -> int:
        """The tokens of `text`, counted over whitespace-cut windows (memory: one window)."""
        window = self.max_length * _CHARS_PER_TOKEN * _COUNT_WINDOW
        total = start = 0
        while start < len(text):
            stop = start + window
            if stop < len(text):
                space = text.rfind(" ", stop - window // 8, stop)
                stop = space if space > start else stop
            total += self._tokens(text[start:stop])
            start = stop
        return total

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
