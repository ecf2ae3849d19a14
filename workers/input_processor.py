"""Text -> token ids: the model's fast tokenizer in batches, truncation counted, huge strings cut.

A text far over the limit is cut by characters before tokenizing (at a word boundary, about
`_CHARS_PER_TOKEN` characters per allowed token), so a 10 MB string costs what a long passage
does. If the cut text turns out not to fill the limit (say, a long run of spaces), it is re-cut
longer, so the tokens kept are the same as tokenizing the whole string would give.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

_CHARS_PER_TOKEN = 16  # generous: English averages ~4.5 characters per word piece


@dataclass
class Tokenized:
    ids: list[np.ndarray]          # one int64 array per text, special tokens included
    truncated: int                 # how many texts were cut to max_length


class InputProcessor:
    """Tokenizes batches of texts for one model folder."""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate"):
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{path}: no fast tokenizer (tokenizer.json) could be built")
        self._tok = tokenizer.backend_tokenizer
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self._encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        self.max_length = max_length
        self.truncation = truncation
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, texts: list[str], first_index: int = 0) -> Tokenized:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text at index {first_index + i} is {type(t).__name__}, not str; "
                                "pass strings only (drop or fill missing texts first)")
        limit = self.max_length * _CHARS_PER_TOKEN
        cut = [self._cut(t, limit) for t in texts]
        encs = self._encode(cut)
        truncated = 0
        for i, enc in enumerate(encs):
            over = bool(enc.overflowing)
            if not over and len(cut[i]) < len(texts[i]):
                enc, over = self._retokenize_longer(texts[i], limit)
                encs[i] = enc
            if over:
                if self.truncation == "error":
                    raise ValueError(
                        f"text at index {first_index + i} is longer than max_length="
                        f"{self.max_length} tokens; shorten it, raise max_length, or use "
                        "truncation='truncate'")
                truncated += 1
        return Tokenized([np.asarray(e.ids, dtype=np.int64) for e in encs], truncated)

    def _retokenize_longer(self, text: str, limit: int):
        while True:
            limit *= 4
            enc = self._encode([self._cut(text, limit)])[0]
            if enc.overflowing or limit >= len(text):
                return enc, bool(enc.overflowing)

    @staticmethod
    def _cut(text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        space = text.rfind(" ", limit - limit // 8, limit)
        return text[:space if space > 0 else limit]
