# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
"""Logging: structlog to journald (native protocol), JSON lines or a console.

Under systemd each event goes to journald as one entry whose fields are the
event's keys, upper-cased: `journalctl -u edgeagent TASK_ID=abc` finds a task's
lines, PRIORITY comes from the level so `-p warning` works, and MESSAGE is a
short human line for the default output. The native protocol is a datagram of
`NAME=value\\n` fields (values with a newline use the length-prefixed binary
form); an entry too large for a datagram is passed as a sealed memfd, as
sd_journal_sendv(3) does.

No secrets and no full prompts at info level and above: `redact_sensitive`
replaces them before any renderer sees the event.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "edgeagent"

# Redacted at every level: credentials never belong in a log.
SECRET_KEYS = frozenset({"password", "secret", "token_value"})
# Redacted above debug: task content (prompts, inputs) only shows at debug level.
CONTENT_KEYS = frozenset({"prompt", "input"})
REDACTED = "[REDACTED]"

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# syslog(3) priorities as journald's PRIORITY field uses them.
_PRIORITY = {
    "critical": 2,
    "fatal": 2,
    "error": 3,
    "exception": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
# Fields the renderer sets itself; event keys with these names get the EA_ prefix.
_RESERVED_FIELDS = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_FACILITY",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
    }
)
_FIELD_NAME_MAX = 64
_MESSAGE_MAX = 300
_MESSAGE_VALUE_MAX = 80
_MAX_DEPTH = 6

Format = Literal["journal", "json", "console"]


# -- redaction ------------------------------------------------------------------


def _redacted(key: str, value: Any) -> Any:
    if key in SECRET_KEYS or not isinstance(value, str):
        return REDACTED
    return f"[REDACTED {len(value)} chars]"


def _redact(value: Any, keys: frozenset[str], depth: int) -> Any:
    """`value` with sensitive keys replaced; containers are copied only when they change."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        out: dict[Any, Any] | None = None
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in keys:
                new = _redacted(key.lower(), item)
            else:
                new = _redact(item, keys, depth + 1)
            if new is not item:
                out = dict(value) if out is None else out
                out[key] = new
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = [_redact(item, keys, depth + 1) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items
    return value


def redact_sensitive(_logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: secrets always, prompts and inputs above debug, at any depth."""
    keys = SECRET_KEYS if method_name == "debug" else SECRET_KEYS | CONTENT_KEYS
    for key, value in list(event_dict.items()):
        if key.lower() in keys:
            event_dict[key] = _redacted(key.lower(), value)
        elif isinstance(value, (Mapping, list, tuple)):
            event_dict[key] = _redact(value, keys, 1)
    return event_dict


class _AddDeviceId:
    """Adds device_id to every event (a processor, so threads get it too)."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("device_id", self.device_id)
        return event_dict


# -- journald native protocol -----------------------------------------------------


def journal_priority(level: str) -> int:
    """syslog priority of a structlog level name (unknown names count as info)."""
    return _PRIORITY.get(level.lower(), 6)


def journal_field_name(key: str) -> str | None:
    """An event key as a journal field name: A-Z, 0-9, _, not starting with _ or a digit."""
    name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key.upper())
    name = name.lstrip("_")
    if not name:
        return None
    if name[0].isdigit():
        name = "F_" + name
    if name in _RESERVED_FIELDS:
        name = "EA_" + name
    return name[:_FIELD_NAME_MAX]


def _field_value(value: Any) -> str:
    if isinstance(value, str):
        return str(value)  # str(): a StrEnum (ErrorCode) gives its value
    try:
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def encode_journal(fields: Iterable[tuple[str, str]]) -> bytes:
    """journald's native datagram: NAME=value lines, length-prefixed when value has a newline."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


def _short(value: Any) -> str:
    text = _field_value(value)
    if " " in text or not text:
        text = json.dumps(text, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    if len(text) > _MESSAGE_VALUE_MAX:
        text = text[: _MESSAGE_VALUE_MAX - 1] + "…"
    return text


# Keys left out of MESSAGE: shown elsewhere, the same on every line, or multi-line.
_NOT_IN_MESSAGE = frozenset({"event", "level", "device_id", "timestamp", "exception", "stack"})


def journal_message(event_dict: Mapping[str, Any]) -> str:
    """The one-line MESSAGE: the event, then key=value pairs, then the exception's last line."""
    parts = [str(event_dict.get("event", ""))]
    parts += [f"{k}={_short(v)}" for k, v in event_dict.items() if k not in _NOT_IN_MESSAGE]
    line = " ".join(p for p in parts if p).replace("\n", " ")
    exception = event_dict.get("exception")
    if isinstance(exception, str) and exception.strip():
        line += " (" + exception.strip().splitlines()[-1] + ")"
    if len(line) > _MESSAGE_MAX:
        line = line[: _MESSAGE_MAX - 1] + "…"
    return line


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What JournalRenderer hands to JournalLogger: the datagram, and the event for fallback."""

    payload: bytes
    event: Mapping[str, Any]


class JournalRenderer:
    """Final structlog processor: event dict -> JournalEntry (MESSAGE, PRIORITY, KEY=value...)."""

    def __init__(self, identifier: str = SYSLOG_IDENTIFIER) -> None:
        self.identifier = identifier

    def fields(self, event_dict: Mapping[str, Any]) -> list[tuple[str, str]]:
        level = str(event_dict.get("level", "info"))
        fields = [
            ("MESSAGE", journal_message(event_dict)),
            ("PRIORITY", str(journal_priority(level))),
            ("SYSLOG_IDENTIFIER", self.identifier),
        ]
        for key, value in event_dict.items():
            if key in ("level", "timestamp"):
                continue  # PRIORITY and journald's own timestamps say it
            name = journal_field_name(str(key))
            if name is not None:
                fields.append((name, _field_value(value)))
        return fields

    def __call__(
        self, _logger: WrappedLogger, _method: str, event_dict: EventDict
    ) -> tuple[tuple[JournalEntry], dict[str, Any]]:
        entry = JournalEntry(encode_journal(self.fields(event_dict)), event_dict)
        return (entry,), {}


class JournalLogger:
    """Sends JournalEntry datagrams to journald; falls back to a JSON line on `fallback`."""

    def __init__(
        self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None, timeout: float = 2.0
    ) -> None:
        self.path = path
        self._fallback = fallback
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # journald is fast; a hung journald must not hang the daemon forever.
        self._sock.settimeout(timeout)
        self._lock = threading.Lock()
        self._failed = False

    def _send_memfd(self, payload: bytes) -> None:
        fd = os.memfd_create("edgeagent-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            # journald only maps memfds sealed exactly like this.
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))
            self._sock.sendmsg([], [rights], 0, self.path)
        finally:
            os.close(fd)

    def send(self, entry: JournalEntry) -> None:
        try:
            try:
                self._sock.sendto(entry.payload, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(entry.payload)
        except OSError as exc:
            self._write_fallback(entry, exc)

    def _write_fallback(self, entry: JournalEntry, exc: OSError) -> None:
        stream = self._fallback if self._fallback is not None else sys.stderr
        lines = []
        if not self._failed:
            self._failed = True
            note = {
                "event": "journal socket send failed; writing JSON to stderr",
                "error": str(exc),
            }
            lines.append(json.dumps(note | {"level": "warning", "socket": self.path}))
        lines.append(json.dumps(dict(entry.event), default=str, ensure_ascii=False))
        try:
            with self._lock:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
        except (OSError, ValueError):
            pass  # nowhere left to log to

    def msg(self, entry: JournalEntry) -> None:
        self.send(entry)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def close(self) -> None:
        self._sock.close()


class JournalLoggerFactory:
    """structlog logger_factory: every logger shares one journal socket."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None) -> None:
        self.logger = JournalLogger(path, fallback)

    def __call__(self, *_args: Any) -> JournalLogger:
        return self.logger


# -- configuration ---------------------------------------------------------------


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

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _AddDeviceId(device_id),
        redact_sensitive,
        structlog.processors.StackInfoRenderer(),
    ]
    factory: Any
    if chosen == "journal":
        processors += [structlog.processors.format_exc_info, JournalRenderer()]
        factory = JournalLoggerFactory(journal_socket, fallback=stream)
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
