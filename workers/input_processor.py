"""Text -> token ids: the model's fast tokenizer in batches, truncation counted, huge strings cut.

A text far over the limit is cut by characters before tokenizing (at a word boundary, about
`_CHARS_PER_TOKEN` characters per allowed token), so a 10 MB string costs what a long passage
does. If the cut text turns out not to fill the limit (say, a long run of spaces), it is re-cut
longer, so the tokens kept are the same as tokenizing the whole string would give.

A prompt (instruction) is prepended to every text before tokenizing and counts toward
max_length. With `skip_instruction`, each text also gets the index of its first pooled token:
the leading special tokens plus the tokens that match the prompt tokenized alone (a token that
merges across the prompt/text boundary counts as text). EOS is whatever the tokenizer appends
(`add_eos_token` in tokenizer_config.json, or the tokenizer.json post-processor).
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
    pool_starts: list[int] | None = None  # first pooled token per text (skip_instruction)


class InputProcessor:
    """Tokenizes batches of texts for one model folder."""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate",
                 prompt: str = "", skip_instruction: bool = False):
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
        self.prompt = prompt
        self.skip_instruction = skip_instruction
        self._lead, self._prompt_ids = self._prompt_layout(prompt)
        if self._lead + len(self._prompt_ids) >= max_length:
            raise ValueError(f"the prompt {prompt[:60]!r} takes {len(self._prompt_ids)} tokens (plus "
                             f"{self._lead} special), leaving no room under max_length={max_length}; "
                             "shorten the prompt or raise max_length")

    def _prompt_layout(self, prompt: str) -> tuple[int, np.ndarray]:
        """(leading special tokens, the prompt's own ids) as this tokenizer produces them."""
        probe = self._tok.encode("a").special_tokens_mask
        lead = next((i for i, special in enumerate(probe) if not special), 0)
        ids = self._tok.encode(prompt, add_special_tokens=False).ids if prompt else []
        return lead, np.asarray(ids, dtype=np.int64)

    def __call__(self, texts: list[str], first_index: int = 0) -> Tokenized:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text at index {first_index + i} is {type(t).__name__}, not str; "
                                "pass strings only (drop or fill missing texts first)")
        limit = self.max_length * _CHARS_PER_TOKEN
        cut = [self._cut(t, limit) for t in texts]
        encs = self._encode([self.prompt + c for c in cut] if self.prompt else cut)
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
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        starts = [self._pool_start(x) for x in ids] if self.skip_instruction else None
        return Tokenized(ids, truncated, starts)

    def _pool_start(self, ids: np.ndarray) -> int:
        """Index of the first token after the special prefix and the prompt (at most the last)."""
        head = ids[self._lead:self._lead + len(self._prompt_ids)]
        same = head == self._prompt_ids[:len(head)]
        n = len(head) if same.all() else int(same.argmin())
        return max(min(self._lead + n, len(ids) - 1), 0)

    def _retokenize_longer(self, text: str, limit: int):
        while True:
            limit *= 4
            enc = self._encode([self.prompt + self._cut(text, limit)])[0]
            if enc.overflowing or limit >= len(text):
                return enc, bool(enc.overflowing)

    @staticmethod
    def _cut(text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        space = text.rfind(" ", limit - limit // 8, limit)
        return text[:space if space > 0 else limit]
