"""The one redaction function (pipeline/redact.py): userinfo and credential query parameters out
of any text; exceptions and their chained causes cleaned in place; the manifest body redacted on
save. The end-to-end search for a planted secret is tests/pipeline/test_s3.py."""
from __future__ import annotations

import doctest
import importlib

import pytest

from pipeline.output.output_folder import OutputFolder
from pipeline.redact import redact, redact_error

SECRET = "wJalrXUtnFEMI7K7MDENG"


@pytest.mark.parametrize("text, want", [
    (f"s3://AKID:{SECRET}@bucket/run", "s3://***@bucket/run"),
    (f"s3://{SECRET}@bucket/run", "s3://***@bucket/run"),
    (f"gs://b/o?X-Goog-Signature={SECRET}&alt=media", "gs://b/o?X-Goog-Signature=***&alt=media"),
    (f"s3://b/x?endpoint_override=h:9000&access_key=AK&secret_key={SECRET}&scheme=http",
     "s3://b/x?endpoint_override=h:9000&access_key=***&secret_key=***&scheme=http"),
    (f"https://h/p?sig={SECRET}&token={SECRET}&password={SECRET}", "https://h/p?sig=***&token=***&password=***"),
    (f"input 's3://k:{SECRET}@b/c/' does not exist; see s3://k2:{SECRET}@b/d", "input 's3://***@b/c/' does not exist; see s3://***@b/d"),
    ("/local/p@th/file.parquet", "/local/p@th/file.parquet"),  # a local path keeps its '@'
    ("s3://bucket/x?endpoint_override=127.0.0.1:9000&region=us-east-1",
     "s3://bucket/x?endpoint_override=127.0.0.1:9000&region=us-east-1"),
])
def test_redact(text, want):
    assert redact(text) == want and SECRET not in redact(text)


def test_redact_error_cleans_the_chain():
    try:
        try:
            raise OSError(2, f"no such object s3://k:{SECRET}@b/x", f"s3://k:{SECRET}@b/x")
        except OSError as inner:
            raise ValueError(f"input s3://k:{SECRET}@b/x failed") from inner
    except ValueError as e:
        error = redact_error(e)
    import traceback
    text = "".join(traceback.format_exception(error))
    assert SECRET not in text and "s3://***@b/x" in text


def test_manifest_body_is_redacted_on_save(tmp_path):
    folder = OutputFolder.open(tmp_path)
    folder.save_manifest(f'{{"input": ["s3://k:{SECRET}@b/c?secret_key={SECRET}"]}}'.encode())
    body = (tmp_path / "_manifest.json").read_text()
    assert SECRET not in body and "s3://***@b/c?secret_key=***" in body


def test_doctests():
    assert doctest.testmod(importlib.import_module("pipeline.redact")).failed == 0
