"""The LLM-reranker input processor: a (query, document) pair inside Qwen3-Reranker's prompt.

The published Qwen3-Reranker format (a chat turn asking for "yes" or "no"):

    <|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n          <- prefix
    <Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}        <- the pair
    <|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n            <- suffix

As in the reference code, prefix and suffix are tokenized once without special tokens, the
middle is tokenized with the tokenizer's defaults and truncated from the right to
`max_length - len(prefix) - len(suffix)` tokens, and the three are concatenated. The model's
last token then predicts "yes" or "no" (see `workers/heads/yes_no_head.py`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .input_processor import _CHARS_PER_TOKEN, InputProcessor, TextTooLongError, Tokenized
from .pair_input import check_pairs

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
          'provided. Note that the answer can only be "yes" or "no".')
PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
ANSWERS = ("yes", "no")


class RerankerPromptProcessor(InputProcessor):
    """(query, document) per request, wrapped in the reranker prompt; `answer_ids` = yes, no."""

    def __init__(self, path: Path, max_length: int, truncation: str = "truncate",
                 instruction: str | None = None):
        super().__init__(path, max_length, truncation)
        self.instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
        self._prefix = self._plain(PREFIX)
        self._suffix = self._plain(SUFFIX)
        budget = max_length - len(self._prefix) - len(self._suffix)
        if budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for the query and document "
                             f"after the reranker prompt's {max_length - budget} tokens; raise max_length")
        self._tok.enable_truncation(budget)
        self.budget = budget
        self.answer_ids = tuple(self._answer_id(word) for word in ANSWERS)

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "RerankerPromptProcessor":
        return cls(path, resolved.max_length, config.truncation, instruction=config.prompt)

    def fingerprint(self) -> dict:
        return {"instruction": self.instruction}

    def __call__(self, pairs: list[tuple[str, str]], first_index: int = 0) -> Tokenized:
        check_pairs(pairs, first_index)
        limit = self.max_length * _CHARS_PER_TOKEN
        truncated, ids = 0, []
        for i, (query, doc) in enumerate(pairs):
            enc, over = self._encode_cut(query, doc, limit)
            if over:
                if self.truncation == "error":
                    raise TextTooLongError(first_index + i, self.max_length, "pair",
                                           "truncation='truncate'")
                truncated += 1
            ids.append(np.concatenate([self._prefix, np.asarray(enc.ids, dtype=np.int64), self._suffix]))
        return Tokenized(ids, truncated)

    def format(self, query: str, doc: str) -> str:
        """The middle of the prompt for one pair (without prefix and suffix)."""
        return TEMPLATE.format(instruction=self.instruction, query=query, doc=doc)

    def _encode_cut(self, query: str, doc: str, limit: int):
        """Encode with the document cut by characters; cut longer while the cut changed the result."""
        query = self._query_prefix(query, limit)
        while True:
            cut = self._cut(doc, limit)
            enc = self._encode([self.format(query, cut)])[0]
            if enc.overflowing or len(cut) == len(doc):
                return enc, bool(enc.overflowing)
            limit *= 4

    def _query_prefix(self, query: str, limit: int) -> str:
        """The query, or a whitespace-cut prefix of it holding more tokens than the budget: the
        truncated prompt is then the same, and a huge query is never tokenized whole (memory)."""
        while len(query) > limit:
            cut = self._cut(query, limit)
            if self._tok.encode(cut, add_special_tokens=False).overflowing:
                return cut  # more tokens than the middle's budget: the rest is cut off anyway
            limit *= 4
        return query

    def _plain(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def _answer_id(self, word: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(word)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no single token {word!r}, which an LLM reranker "
                             "scores; this folder is not a yes/no reranker (use task='embed')")
        return int(token_id)
