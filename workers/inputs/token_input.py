"""Input of task="tokens": single texts, plus a multi-vector folder's query/document side.

A plain folder: texts as `TextInputProcessor` tokenizes them, every token kept. A multi-vector
folder (see `multi_vector_folder.py`) has two sides, picked per call with `side(is_query)`, as
`MultiVectorEncoder.encode_query` / `encode_document` tokenize them:
- the side's marker (prompt) before the text, the side's max length;
- documents: skip-list tokens (punctuation) are not KEEP, so the head drops them;
- queries with expansion: the query is padded with the expansion token ([MASK]) up to the
  expansion length (`fixed`: truncated to it too); with `attend: false` those pads are
  QUERY_ONLY (they read the query, nothing reads them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AddedToken

from ..loading.multi_vector_folder import MultiVectorLayout, read_multi_vector_layout
from .input_processor import TextInputProcessor, Tokenized
from .token_flags import KEEP, QUERY_ONLY


class TokenInputProcessor(TextInputProcessor):
    def __init__(self, path: Path, max_length: int, truncation: str = "truncate", prompt: str = "",
                 layout: MultiVectorLayout | None = None, side: str = "document"):
        super().__init__(path, max_length, truncation, prompt)
        self.layout, self.side_name = layout, side
        self.query_side: TokenInputProcessor | None = None
        if layout is None:
            return
        self._register_prefixes(layout.legacy_prefixes)
        self._lead, self._prompt_ids = self._prompt_layout(prompt)
        skip = layout.skiplist_words if side in layout.skiplist_tasks else ()
        self.skip_ids = np.asarray(self._token_ids(skip), dtype=np.int64)
        self.expansion = layout.expansion if side == "query" else None
        if self.expansion is not None:
            t = self.tokenizer
            token = self.expansion["token"]
            self.expansion_id = t.convert_tokens_to_ids(token) if token is not None else \
                (t.mask_token_id if t.mask_token_id is not None else t.eos_token_id)

    @classmethod
    def for_engine(cls, path: Path, resolved, config) -> "TokenInputProcessor":
        layout = read_multi_vector_layout(path)
        if layout is None:
            return cls(path, resolved.max_length, config.truncation, resolved.prompt)
        sides = {}
        for side in ("document", "query"):
            prompt = config.prompt if config.prompt is not None else layout.prompts.get(side) or ""
            sides[side] = cls(path, layout.max_length(side, resolved.max_length), config.truncation,
                              prompt, layout, side)
        sides["document"].query_side = sides["query"]
        return sides["document"]

    def side(self, is_query: bool) -> "TokenInputProcessor":
        """The processor for queries (is_query=True) or documents."""
        if not is_query:
            return self
        if self.query_side is None:
            raise ValueError("is_query=True applies to a multi-vector folder (query/document markers, "
                             "query expansion); this folder is a plain model whose token states have "
                             "no query side; drop is_query")
        return self.query_side

    def fingerprint(self) -> dict:
        return {} if self.layout is None else {"multi_vector": True}

    def __call__(self, texts: list[str], first_index: int = 0) -> Tokenized:
        tok = super().__call__(texts, first_index)
        if self.layout is None:
            return tok
        flags = []
        for i, ids in enumerate(tok.ids):
            f = np.where(np.isin(ids, self.skip_ids), 0, KEEP).astype(np.uint8)
            pads = self.expansion["length"] - len(ids) if self.expansion else 0
            if pads > 0:
                tok.ids[i] = np.concatenate([ids, np.full(pads, self.expansion_id, dtype=np.int64)])
                hidden = 0 if self.expansion["attend"] else QUERY_ONLY
                f = np.concatenate([f, np.full(pads, KEEP | hidden, dtype=np.uint8)])
            flags.append(f)
        tok.flags = flags
        return tok

    def _register_prefixes(self, prefixes: tuple[str, ...]) -> None:
        """PyLate markers ([unused0], [Q]) known to the vocabulary stay one token, as
        MultiVectorEncoder registers them (a special token, not normalized)."""
        vocab = self.tokenizer.get_vocab()
        for value in prefixes:
            for prefix in (value, value.split(None, 1)[0] if value.split() else value):
                if prefix not in vocab:
                    continue
                if self.tokenizer.tokenize(prefix) != [prefix]:
                    self.tokenizer.add_special_tokens(
                        {"additional_special_tokens": [AddedToken(prefix, normalized=False, special=True)]})
                break

    def _token_ids(self, words: tuple[str, ...]) -> list[int]:
        """Skip-list words as single-token ids; words that are no single token are left out (as
        MultiVectorMask does, so a real [UNK] is never dropped)."""
        t = self.tokenizer
        ids = [t.convert_tokens_to_ids(w) for w in words]
        return [i for w, i in zip(words, ids) if i is not None and (i != t.unk_token_id or w == t.unk_token)]
