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

With truncation="chunk" a text over max_length becomes several windows instead: its tokens
(without special tokens or prompt) are split into windows of `max_length - specials - prompt`
tokens that overlap by `chunk_overlap`, and each window gets the special tokens and the prompt
back. Such a text is tokenized in character slices cut at whitespace (`_SLICE_CHARS` each), so
memory stays bounded however long it is; the engine combines the windows' vectors into one (see
`workers/chunking.py`). A text that fits is tokenized exactly as in the other modes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from transformers import AutoTokenizer

_CHARS_PER_TOKEN = 16  # generous: English averages ~4.5 characters per word piece
_SLICE_CHARS = 1 << 16  # chunk mode: characters tokenized at a time from an over-long text


class TextTooLongError(ValueError):
    """truncation="error" and a text is over max_length; `index` is its position in the call."""

    def __init__(self, index: int, max_length: int):
        super().__init__(f"text at index {index} is longer than max_length={max_length} tokens; "
                         "shorten it, raise max_length, or use truncation='truncate' or 'chunk'")
        self.index, self.max_length = index, max_length


@dataclass
class Tokenized:
    ids: list[np.ndarray]          # one int64 array per text, special tokens included
    truncated: int                 # how many texts were cut to max_length
    pool_starts: list[int] | None = None  # first pooled token per text (skip_instruction)
    # Chunk mode only (else None): per entry of `ids`, the offset of its text in the call; and
    # for each text split into windows, the content tokens of each of its windows, in order.
    owners: list[int] | None = None
    windows: dict[int, list[int]] | None = None


class InputProcessor:
    """Tokenizes batches of texts for one model folder."""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate",
                 prompt: str = "", skip_instruction: bool = False, chunk_overlap: int | None = None):
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
        if truncation == "chunk":
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
        if self.truncation == "chunk":
            return self._chunked(texts)
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
                    raise TextTooLongError(first_index + i, self.max_length)
                truncated += 1
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        starts = [self._pool_start(x) for x in ids] if self.skip_instruction else None
        return Tokenized(ids, truncated, starts)

    def _chunked(self, texts: list[str]) -> Tokenized:
        """Chunk mode: texts that fit as usual; every other text as overlapping windows."""
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
