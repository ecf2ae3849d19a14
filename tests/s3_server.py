"""A real S3-compatible server for tests: moto's server on 127.0.0.1 in a thread (a dev
dependency), with a per-request counter. conftest.py's `moto` fixture starts one per module."""
from __future__ import annotations

import threading
from collections import Counter

import pyarrow.fs as pafs

KEY, SECRET = "AKIDPIPELINETEST", "Zq7SecretValue9xTopSecret"


class Moto:
    """moto's S3 in a thread, with a per-request counter (method, S3 operation kind) and a log
    of every request's kind, path and byte range (`requests`; the range "" when none)."""

    def __init__(self):
        from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                                   create_backend_app)
        from werkzeug.serving import make_server
        app, self.counts = DomainDispatcherApplication(create_backend_app), Counter()
        self.requests: list[tuple[str, str, str]] = []  # (request kind, path, Range header) in order

        def counting(environ, start_response):
            query = environ.get("QUERY_STRING", "")
            kind = next((k for k in ("uploads", "uploadId", "list-type", "delete") if k in query), "")
            self.counts[f"{environ['REQUEST_METHOD']} {kind}".strip()] += 1
            self.requests.append((f"{environ['REQUEST_METHOD']} {kind}".strip(),
                                  environ.get("PATH_INFO", "") + (f"?{query}" if query else ""),
                                  environ.get("HTTP_RANGE", "")))
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def uri(self, path: str) -> str:
        """`s3://KEY:SECRET@path?...` as a user would pass it (credentials in the URI)."""
        return (f"s3://{KEY}:{SECRET}@{path}?scheme=http&endpoint_override=127.0.0.1:{self.port}"
                "&region=us-east-1&allow_bucket_creation=true")

    def fs(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, scheme="http", region="us-east-1",
                                 endpoint_override=f"127.0.0.1:{self.port}", allow_bucket_creation=True)

    def objects(self, prefix: str) -> dict[str, bytes]:
        fs = self.fs()
        infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        out = {}
        for info in infos:
            if info.is_file:
                with fs.open_input_stream(info.path) as f:
                    out[info.path[len(prefix) + 1:]] = f.read()
        return out

    def stop(self):
        self.server.shutdown()
        self.thread.join()

    def clear(self) -> None:
        """Forget the requests counted so far."""
        self.counts.clear()
        self.requests.clear()
