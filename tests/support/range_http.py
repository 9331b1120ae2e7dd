"""A static HTTP server with byte ranges (like nginx's), recording every request: the
model mirror of the tests (python's http.server ignores Range)."""

from __future__ import annotations

import http.server
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Served:
    path: str
    range: str | None  # the request's Range header
    status: int
    sent: int  # body bytes written


class RangeServer:
    """Serves `directory` on address:port (0: a free one); `log` lists what was served.

    `ranges=False` ignores Range (200 with the whole file), `cut_after` ends the connection
    after that many body bytes (a download interrupted midway)."""

    def __init__(self, directory: Path, address: str = "127.0.0.1") -> None:
        self.directory = directory.absolute()
        self.log: list[Served] = []
        self.ranges = True
        self.cut_after: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        wanted = handler.headers.get("Range")
        # Lexically inside the directory (its entries may be symlinks to a cache).
        path = Path(os.path.normpath(self.directory / handler.path.lstrip("/")))
        if not path.is_file() or self.directory not in path.parents:
            handler.send_error(404)
            self.log.append(Served(handler.path, wanted, 404, 0))
            return
        data = path.read_bytes()
        start, end, status = 0, len(data), 200
        match = _RANGE.match(wanted or "") if self.ranges else None
        if match:
            start = int(match[1])
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                self.log.append(Served(handler.path, wanted, 416, 0))
                return
            status = 206
        body = data[start:end]
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        handler.end_headers()
        if self.cut_after is not None and self.cut_after < len(body):
            body = body[: self.cut_after]
            handler.close_connection = True
        handler.wfile.write(body)
        handler.wfile.flush()
        self.log.append(Served(handler.path, wanted, status, len(body)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
