"""The metrics HTTP endpoint: one thread, a bounded number of connections, timeouts.

prometheus_client's `start_http_server` starts a thread per connection and waits for its
request without a timeout: 300 clients that connected and sent nothing made 307
threads, and the threads counted against the unit's `TasksMax`, which other parts of
the daemon need. This endpoint is a small asyncio server on a thread of its own (its own
event loop: a scrape never costs the daemon's loop a step):

* at most `MAX_CONNECTIONS` connections at once. A new one is always taken: when the
  endpoint is full, the oldest connection that has not sent its request yet is closed to
  make room (a scraper sends its request as soon as it connects; a connection that
  sends nothing is the one that loses), and only when every connection is being
  answered is the new one closed instead;
* `REQUEST_TIMEOUT_S` for the request head to arrive, at most `MAX_REQUEST_BYTES`, and
  `WRITE_TIMEOUT_S` for the response to leave; one request per connection;
* the exposition text is built at most once per `CACHE_S` per format, so a flood of
  requests costs bytes written, not registry walks.

The formats are prometheus_client's (`choose_encoder`: the text format, or OpenMetrics
when the scraper asks for it). Only GET and HEAD of `/metrics` (or `/`) are served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = structlog.get_logger("edgeagent.service.views.prometheus_http")

MAX_CONNECTIONS = 16
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192
CACHE_S = 1.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PATHS = ("/metrics", "/")


@dataclass(slots=True)
class _Connection:
    task: asyncio.Task[None]
    transport: asyncio.WriteTransport
    answering: bool = False  # its request arrived; it is not closed to make room


class ExpositionCache:
    """The registry's text per content type, rebuilt when older than `max_age_s`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        max_age_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._max_age_s = max_age_s
        self._clock = clock
        self._built: dict[str, tuple[float, bytes]] = {}

    def body(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        now = self._clock()
        cached = self._built.get(content_type)
        if cached is None or now - cached[0] >= self._max_age_s:
            cached = (now, encoder(self._registry))
            self._built[content_type] = cached
        return cached[1], content_type


def _response(status: str, content_type: str, body: bytes, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return header.encode("ascii") + (b"" if head else body)


def _plain(status: str) -> bytes:
    return _response(status, "text/plain; charset=utf-8", status.encode("ascii") + b"\n")


def _parse_head(head: bytes) -> tuple[str, str, str]:
    """(method, path, Accept header) of a request head; ValueError when malformed."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(version)
    accept = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "accept":
            accept = value.strip()
    return method, target.split("?", 1)[0], accept


class MetricsServer:
    """Serves a registry on address:port from its own thread; `start`, then `stop`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        address: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.port = port
        self._cache = ExpositionCache(registry)
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self._connections: dict[asyncio.Task[None], _Connection] = {}  # oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.evicted = 0  # connections closed to make room (tests, logs)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(bound,), name="metrics-http", daemon=True
        )
        self._thread.start()
        self.port = bound.result(timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed already: stopped
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
        self._thread = None

    # -- the endpoint's thread -----------------------------------------------------------

    def _run(self, bound: concurrent.futures.Future[int]) -> None:
        asyncio.run(self._main(bound))

    async def _main(self, bound: concurrent.futures.Future[int]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._serve, self.address, self.port, limit=MAX_REQUEST_BYTES
            )
        except Exception as exc:  # the caller's start() raises it
            bound.set_exception(exc)
            return
        bound.set_result(int(server.sockets[0].getsockname()[1]))
        async with server:  # stops listening when left
            await self._stopping.wait()
        connections = list(self._connections.values())
        for connection in connections:
            connection.transport.abort()  # each task then returns by itself
        await asyncio.gather(*(c.task for c in connections), return_exceptions=True)

    def _admit(self, task: asyncio.Task[None], transport: asyncio.WriteTransport) -> bool:
        """Make room for a new connection; False when none can be made."""
        if len(self._connections) >= self._max_connections:
            waiting = next((c for c in self._connections.values() if not c.answering), None)
            if waiting is None:
                return False
            self.evicted += 1
            # Aborted, not cancelled: its read ends with IncompleteReadError and the task
            # returns (asyncio's streams log a cancelled connection task as an error).
            waiting.transport.abort()
            self._connections.pop(waiting.task, None)
        self._connections[task] = _Connection(task, transport)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._admit(task, writer.transport):
            writer.transport.abort()
            return
        try:
            await self._answer(reader, writer, self._connections[task])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.transport.abort()  # went away, stalled or sent too much: nothing to say
        finally:
            self._connections.pop(task, None)
            writer.close()  # the response, drained already, is not cut off

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        async with asyncio.timeout(self._request_timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
        connection.answering = True
        try:
            method, path, accept = _parse_head(head[:-4])
        except ValueError:
            response = _plain("400 Bad Request")
        else:
            if method not in ("GET", "HEAD"):
                response = _plain("405 Method Not Allowed")
            elif path not in PATHS:
                response = _plain("404 Not Found")
            else:
                body, content_type = self._cache.body(accept)
                response = _response("200 OK", content_type, body, head=method == "HEAD")
        writer.write(response)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()
