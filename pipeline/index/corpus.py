"""An output folder opened for indexing (both index kinds read it through this): its manifest,
its parts in input order, and how to decode their vectors (float32, dequantized int8, or packed
ubinary bits)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, InputNotFoundError
from ..output import quantize
from ..output.manifest import Manifest
from ..output.output_folder import OutputFolder
from ..output.writer import to_numpy

INDEXED_TASKS = ("embed", "chunks")  # outputs of one vector per row (a chunk's row: its span too)
CHUNK_KEYS = ("chunk", "char_start", "char_end")


@dataclass(frozen=True)
class Corpus:
    """An output folder opened for indexing: its manifest, part paths and how to decode them."""

    folder: OutputFolder
    manifest: Manifest
    quant: dict

    @classmethod
    def open(cls, path) -> "Corpus":
        folder = OutputFolder.open(path)
        manifest = Manifest.load(folder)
        if manifest is None:
            raise InputNotFoundError(f"{folder} has no _manifest.json: pass the output folder of "
                                     "pipeline.run / jobs/embed_corpus.py as --embeddings")
        task = manifest.fingerprint["engine"].get("task", "embed")
        if task not in INDEXED_TASKS:
            raise InputError(f"{folder} holds the output of task={task!r}, not embeddings; "
                             "index the output of a task='embed' (or 'chunks') run")
        if not manifest.data.get("complete"):
            raise InputError(f"the run writing {folder} has not finished; rerun it to finish first")
        quant = manifest.data.get("quantization") or quantize.record(
            manifest.fingerprint.get("output_dtype", "float32"), manifest.fingerprint["engine"]["dimensions"])
        return cls(folder, manifest, quant)

    @property
    def rows(self) -> int:
        """Vectors in the output (a chunk output has more than its input rows)."""
        return sum(r.get("output_rows", r["rows"]) for _, r in self.manifest.records())

    @property
    def keys(self) -> list[str]:
        """The columns that say what a vector is: `id`, and a chunk's index and span."""
        chunks = self.manifest.fingerprint["engine"].get("task") == "chunks"
        return ["id", *CHUNK_KEYS] if chunks else ["id"]

    @property
    def binary(self) -> bool:
        return self.quant["output_dtype"] == "ubinary"

    @property
    def metric(self) -> str:
        if self.binary:
            return "hamming"
        return "ip" if self.manifest.fingerprint["engine"].get("normalize") else "l2"

    def shards(self) -> list[tuple[str, dict]]:
        """(shard id, manifest record) of every committed shard in input order: one part each
        (the records converted in bulk from the commit log's columns, not one lookup per shard)."""
        return list(self.manifest.records())

    def parts(self):
        """(keys table, vectors) per part in input order (`shards()`'s): the `keys` columns, and
        float32 (n, dim) vectors, or packed uint8 for ubinary."""
        for table in self.folder.read_parts([record for _, record in self.shards()], [*self.keys, "embedding"]):
            stored = to_numpy(table)
            vectors = stored if self.binary else quantize.decode(stored, self.quant)
            if self.quant["output_dtype"] == "int8" and self.metric == "ip":
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            yield table.select(self.keys), np.ascontiguousarray(vectors)
