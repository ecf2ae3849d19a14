"""The one redaction function: credentials taken out of URIs before anything is written or printed.

A URI may carry credentials in two places: the userinfo (`s3://KEY:SECRET@bucket/x`, the only
form pyarrow's S3 URIs accept) and the query (`?access_key=…&secret_key=…`, presigned
`X-Amz-Signature=…`, `sig=`, `token=`). `redact` replaces both with `***` anywhere in a text, so
it serves a single URI as well as a whole message that quotes one. Every place that writes a
location (manifest, part metadata, logs, progress, summary, errors file, exception texts) goes
through it; see docs/SCALE.md for the list and the test that searches for a planted secret.
"""
from __future__ import annotations

import os
import re

MASK = "***"
# scheme://userinfo@ : the userinfo ends at the first "@" before any "/", whitespace or quote.
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
# A query or fragment parameter whose name says it holds a credential.
_SECRET_PARAM = re.compile(
    r"([?&;](?:[\w.-]*?)(?:key|secret|token|signature|sig|password|passwd|pwd|credential|"
    r"session|auth)[\w.-]*=)[^&#\s'\"]*", re.IGNORECASE)


def redact(text) -> str:
    """`text` (a URI, a path or a message quoting them) with credentials replaced by `***`.

    Examples:
        >>> redact("s3://AKID:s3cret@bucket/run?endpoint_override=h:9000&secret_key=x")
        's3://***@bucket/run?endpoint_override=h:9000&secret_key=***'
        >>> redact("input 'gs://b/x?X-Goog-Signature=abc&alt=media' does not exist")
        "input 'gs://b/x?X-Goog-Signature=***&alt=media' does not exist"
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    return _SECRET_PARAM.sub(rf"\1{MASK}", _USERINFO.sub(rf"\1{MASK}@", text))


def redact_error(error: BaseException) -> BaseException:
    """`error` with credentials taken out of its message (in place; returned for `raise`).

    Used at the public boundary (`pipeline.run`, the CLI), so no exception text the pipeline
    raises quotes a secret even when it came from a library that printed the whole URI. The
    chained causes (shown in a traceback) are cleaned too.
    """
    seen, link = set(), error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        _redact_one(link)
        link = link.__cause__ or link.__context__
    return error


def _redact_one(error: BaseException) -> None:
    if error.args and any(isinstance(a, str) for a in error.args):
        clean = tuple(redact(a) if isinstance(a, str) else a for a in error.args)
        if clean != error.args:
            error.args = clean
    for name in ("strerror", "filename", "filename2"):  # OSError keeps them apart from args
        value = getattr(error, name, None)
        if isinstance(value, str) and redact(value) != value:
            try:
                setattr(error, name, redact(value))
            except AttributeError:
                pass  # read-only on this type: its text comes from args, already clean
