"""Input processors, the first module of a workflow: user inputs in, token ids out.

This module holds what every processor shares (the model's fast tokenizer, the character cut
that keeps a 10 MB string as cheap as a 512-token one, `Tokenized`, `TextTooLongError`) and the
single-text processor. The others live beside it: `chunked_input.py` (long texts as windows),
`pair_input.py` (cross-encoder pairs) and `reranker_input.py` (an LLM reranker's prompt).

Single texts are tokenized in one batch call to the Rust tokenizer, truncated at max_length.
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


class TextTooLongError(ValueError):
    """truncation="error" and a text is over max_length; `index` is its position in the call."""

    def __init__(self, index: int, max_length: int, what: str = "text",
                 fixes: str = "truncation='truncate' or 'chunk'"):
        super().__init__(f"{what} at index {index} is longer than max_length={max_length} tokens; "
                         f"shorten it, raise max_length, or use {fixes}")
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
    type_ids: list[np.ndarray] | None = None  # per entry of `ids`: token type ids (text pairs)
    # per entry of `ids`: uint8 token flags for token-level heads (see `workers/inputs/token_flags.py`)
    flags: list[np.ndarray] | None = None
    # per entry of `ids`: int64 piece of each token for a span head (late chunking), -1: not
    # pooled; pieces count from 0 in each entry (see `workers/inputs/late_chunk_input.py`)
    segments: list[np.ndarray] | None = None


class InputProcessor:
    """What every input processor shares: the fast tokenizer (truncating at max_length), the
    prompt's layout, and the character cut. Subclasses define `__call__(items, first_index)`."""

    # Set on a processor whose results must be folded back after the head (chunk mode): a
    # function (results, ledger, normalize) -> results; see `workers/inputs/chunking.py`.
    combiner = None

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate", prompt: str = "",
                 skip_instruction: bool = False):
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{path}: no fast tokenizer (tokenizer.json) could be built")
        self.tokenizer = tokenizer
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

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "InputProcessor":
        """Built by the engine at start-up from the resolved values and the user's config."""
        return cls(path, resolved.max_length, config.truncation, prompt=resolved.prompt,
                   skip_instruction=resolved.skip_instruction)

    def fingerprint(self) -> dict:
        """What this processor adds to the engine's fingerprint (beyond max_length, prompt)."""
        return {}

    @staticmethod
    def _check_texts(texts: list, first_index: int) -> None:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text at index {first_index + i} is {type(t).__name__}, not str; "
                                "pass strings only (drop or fill missing texts first)")

    def _prompt_layout(self, prompt: str) -> tuple[int, np.ndarray]:
        """(leading special tokens, the prompt's own ids) as this tokenizer produces them."""
        probe = self._tok.encode("a").special_tokens_mask
        lead = next((i for i, special in enumerate(probe) if not special), 0)
        ids = self._tok.encode(prompt, add_special_tokens=False).ids if prompt else []
        return lead, np.asarray(ids, dtype=np.int64)

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


class TextInputProcessor(InputProcessor):
    """One text per request: the input of embed and classify."""

    def __call__(self, texts: list[str], first_index: int = 0) -> Tokenized:
        self._check_texts(texts, first_index)
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
