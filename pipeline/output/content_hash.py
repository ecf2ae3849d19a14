"""The content hash of an output row: 16 bytes naming exactly what the engine embedded.

Every part carries a `content_hash` column (`fixed_size_binary[16]`), one value per output row:

    md5( field(prompt) + field(text) [+ field(pair text)] )   where   field(s) = b"%d:" % len(u) + u,  u = s.encode("utf-8")

`prompt` is the engine's prompt (the instruction it puts before every text: the fingerprint's
`engine.prompt`, "" when none); `text` is the row's `text_column` value and `pair text` its
`pair_column` value (task="score"). The byte-length prefixes make the concatenation
unambiguous (no separator a text could contain). task="chunks" repeats its input row's hash on
every chunk row (the chunk spans are not part of it: reuse does not apply to that task).

MD5 here is a content address, not a security measure. It is chosen because DuckDB computes the
same bytes natively (`sql_expression`), so the reuse plan (`pipeline/execution/reuse.py`) hashes a
whole corpus out of core with no Python per row; `row_hashes` is the same function in Python
(tests/pipeline/test_reuse.py checks that both agree on non-ASCII, empty and long texts).
Readers (`pipeline.read_embeddings` etc.) leave the column out unless `columns=` names it.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

HASH_COLUMN = "content_hash"
HASH_TYPE = pa.binary(16)


def _field(s: str) -> bytes:
    u = s.encode("utf-8")
    return b"%d:" % len(u) + u


def row_hash(prompt: str, texts: tuple[str, ...] | list[str]) -> bytes:
    """The 16-byte hash of one row: its prompt and texts (text, then pair text)."""
    return hashlib.md5(_field(prompt or "") + b"".join(_field(t) for t in texts)).digest()


def row_hashes(prompt: str, columns: list[list[str]]) -> pa.FixedSizeBinaryArray:
    """The hashes of rows given as one list of strings per text column."""
    head = _field(prompt or "")
    values = [hashlib.md5(head + b"".join(_field(t) for t in row)).digest() for row in zip(*columns)]
    return pa.array(values, HASH_TYPE)


def sql_expression(prompt: str, columns: list[str]) -> str:
    """The DuckDB expression of the same hash over VARCHAR `columns` (a BLOB of 16 bytes).
    `strlen` is DuckDB's length in bytes, as `len(s.encode())` is in Python."""
    parts = [_sql_literal(_field(prompt or "").decode("utf-8"))]
    for c in columns:
        quoted = '"' + c.replace('"', '""') + '"'
        parts.append(f"CAST(strlen({quoted}) AS VARCHAR) || ':' || {quoted}")
    return f"unhex(md5({' || '.join(parts)}))"


def _sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
