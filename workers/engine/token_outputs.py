"""The engine's ragged-output calls: token vectors, sparse vectors and bge-m3's three outputs.

Mixed into `Engine`. Each call runs the same path as embed (tokenize -> schedule -> build ->
run per the execute loop); the head returns flat tensors + offsets per batch and
`ragged.SPLITTERS` cuts them per input, placed back in input order.
"""
from __future__ import annotations

import numpy as np

from ..heads.ragged import SPLITTERS, top_k_sparse


class TokenOutputs:
    def embed_tokens(self, texts: list[str], is_query: bool = False) -> list[np.ndarray]:
        """One float32 (L_i, d) array per text (task="tokens"), in input order.

        A plain model folder gives the last hidden state of every token, special tokens
        included (transformers' `last_hidden_state`, unnormalized). A multi-vector folder
        (sentence-transformers MultiVectorEncoder, PyLate ColBERT) gives its projected,
        normalized token vectors as `MultiVectorEncoder.encode_query` (is_query=True: query
        marker, query expansion) or `encode_document` (document marker, skip-list dropped).

            engine = Engine(EngineConfig(model="path/to/colbert", task="tokens"))
            q = engine.embed_tokens(["what is late interaction?"], is_query=True)[0]   # (32, 128)
            d = engine.embed_tokens(passages)                                           # [(L_i, 128)]
            maxsim = (q @ d[0].T).max(axis=1).sum()
        """
        self._expect("tokens", "embed_tokens")
        texts = self._texts(texts, "embed_tokens")
        return self._collect_ragged(texts, self.processor.side(bool(is_query)))

    def embed_sparse(self, texts: list[str], top_k: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """One (indices int32, values float32) pair per text (task="sparse"), sorted by index:
        the nonzero SPLADE weights over the vocabulary, as SparseEncoder.encode; with `top_k`
        only the k largest values are kept (ties: the lower index).

            engine = Engine(EngineConfig(model="path/to/splade", task="sparse"))
            indices, values = engine.embed_sparse(["a passage"], top_k=128)[0]
        """
        self._expect("sparse", "embed_sparse")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be a positive integer or None")
        pairs = self._collect_ragged(self._texts(texts, "embed_sparse"))
        return [top_k_sparse(i, v, top_k) for i, v in pairs]

    def embed_m3(self, texts: list[str]) -> dict:
        """bge-m3's three outputs from one forward (task="bge-m3"), input order:
        "dense" float32 (n, d) normalized CLS vectors; "sparse" one (indices int32, values
        float32) per text (token ids, max weight per id, special tokens dropped); "colbert" one
        float32 (L_i - 1, d) array per text (normalized, every token after CLS).

            m3 = Engine(EngineConfig(model="path/to/bge-m3", task="bge-m3", allow_pickle=True))
            out = m3.embed_m3(["a passage"])
            out["dense"][0], out["sparse"][0], out["colbert"][0]
        """
        self._expect("bge_m3", "embed_m3")
        texts = self._texts(texts, "embed_m3")
        items = self._collect_ragged(texts)
        dense = np.stack([x["dense"] for x in items]) if items else np.empty((0, self.dim), np.float32)
        return {"dense": dense, "sparse": [x["sparse"] for x in items],
                "colbert": [x["colbert"] for x in items]}

    @staticmethod
    def _texts(texts, method: str) -> list:
        if isinstance(texts, str):
            raise TypeError(f"{method}() takes a list of strings; wrap a single text as [text]")
        return list(texts)

    def _collect_ragged(self, items: list, processor=None) -> list:
        split = SPLITTERS[self.workflow.output]
        out: list = [None] * len(items)
        for indices, result in self._run(items, processor):
            for i, piece in zip(indices.tolist(), split(result)):
                out[i] = piece
        return out
