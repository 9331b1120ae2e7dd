"""Logging set-up: structlog to journald, JSON lines or a console, chosen at start.

Under systemd (`$JOURNAL_STREAM` names our stderr) events go to journald natively;
otherwise JSON lines when not a terminal, a console renderer on one. No secrets and
no full prompts at info level and above: `redact_sensitive` runs before any renderer.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

from edgeagent.service.system.journald import (
    JOURNAL_SOCKET,
    JournaldLoggerFactory,
    JournaldRenderer,
)
from edgeagent.service.system.redaction import redact_sensitive

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
Format = Literal["journal", "json", "console"]


class _AddDeviceId:
    """Adds device_id to every event (a processor, so threads get it too)."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("device_id", self.device_id)
        return event_dict


# stderr (or stdout) through a descriptor of our own, one per process (see _own_descriptor).
_OWN_STREAMS: dict[int, TextIO] = {}


def _own_descriptor(stream: TextIO) -> TextIO:
    """The process's stderr through a duplicate of its descriptor. llama-cpp-python points
    descriptors 1 and 2 at /dev/null while it creates a model or a context (its
    suppress_stdout_stderr): lines other threads log meanwhile (MQTT, deliveries, the
    event loop, while the model loads or the governor resizes the context) would vanish.
    Any other stream (a file, a test's StringIO) is used as it is."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    if fd not in (1, 2):
        return stream
    if fd not in _OWN_STREAMS:
        _OWN_STREAMS[fd] = os.fdopen(  # kept open for the process's life
            os.dup(fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace"
        )
    return _OWN_STREAMS[fd]


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(Path(path).stat().st_mode)
    except OSError:
        return False


def _stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """$JOURNAL_STREAM names the journal's stderr as dev:inode; it must be `stream`'s.

    Compared as systemd.exec(5) advises: a child whose stderr was redirected
    inherits the variable but not the stream.
    """
    raw = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = raw.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def resolve_format(
    fmt: str,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    journal_socket: str = JOURNAL_SOCKET,
) -> Format:
    """auto|journal|json|console -> the renderer to use; journal needs its socket."""
    stream = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    if fmt not in ("auto", "journal", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    if fmt == "auto":
        if _stream_is_journal(stream, env):
            fmt = "journal"
        else:
            return "console" if _isatty(stream) else "json"
    if fmt == "journal":
        return "journal" if _is_socket(journal_socket) else "json"
    return "json" if fmt == "json" else "console"


class _StdlibToStructlog(logging.Handler):
    """Routes records of stdlib loggers (paho-mqtt, asyncio) through structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = max(logging.DEBUG, min(logging.CRITICAL, record.levelno // 10 * 10))
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            structlog.get_logger().log(level, record.getMessage(), **extra)
        except Exception:
            self.handleError(record)


def _capture_stdlib(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibToStructlog):
            root.removeHandler(handler)
    root.addHandler(_StdlibToStructlog())
    root.setLevel(level)


def configure_logging(
    level: str,
    fmt: str,
    device_id: str,
    *,
    journal_socket: str = JOURNAL_SOCKET,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    capture_stdlib: bool = True,
) -> Format:
    """Configure structlog (and route stdlib logging into it); returns the format in use.

    `level`: debug|info|warning|error|critical. `fmt`: auto|journal|json|console
    (LogConfig.format). A journal format whose socket is missing falls back to
    JSON lines on `stream` (default stderr). Safe to call again, e.g. on SIGHUP.
    """
    stream = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    try:
        level_no = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    chosen = resolve_format(fmt, stream=stream, environ=env, journal_socket=journal_socket)
    wanted_journal = fmt == "journal" or (fmt == "auto" and _stream_is_journal(stream, env))
    stream = _own_descriptor(stream)

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _AddDeviceId(device_id),
        redact_sensitive,
        structlog.processors.StackInfoRenderer(),
    ]
    factory: Any
    if chosen == "journal":
        processors += [structlog.processors.format_exc_info, JournaldRenderer()]
        factory = JournaldLoggerFactory(journal_socket, fallback=stream)
    elif chosen == "json":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
        factory = structlog.WriteLoggerFactory(file=stream)
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=_isatty(stream)),
        ]
        factory = structlog.WriteLoggerFactory(file=stream)

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=factory,
        # Not cached: module-level loggers must follow a reconfiguration (SIGHUP).
        cache_logger_on_first_use=False,
    )
    if capture_stdlib:
        _capture_stdlib(level_no)
    if wanted_journal and chosen != "journal":
        structlog.get_logger(__name__).warning(
            "journal socket missing; logging JSON to stderr", socket=journal_socket
        )
    return chosen
