"""journald's native protocol for structlog: one entry per event, its keys as fields.

Each event goes to journald as one entry whose fields are the event's keys,
upper-cased: `journalctl -u edgeagent TASK_ID=abc` finds a task's lines, PRIORITY
comes from the level so `-p warning` works, and MESSAGE is a short human line for
the default output. The datagram is `NAME=value\\n` fields (values with a newline use
the length-prefixed binary form); an entry too large for a datagram is passed as a
sealed memfd, as sd_journal_sendv(3) does.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "edgeagent"
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
class JournaldEntry:
    """What JournaldRenderer hands to JournaldLogger: the datagram, and the event for fallback."""

    payload: bytes
    event: Mapping[str, Any]


class JournaldRenderer:
    """Final structlog processor: event dict -> JournaldEntry (MESSAGE, PRIORITY, KEY=value...)."""

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
    ) -> tuple[tuple[JournaldEntry], dict[str, Any]]:
        entry = JournaldEntry(encode_journal(self.fields(event_dict)), event_dict)
        return (entry,), {}


class JournaldLogger:
    """Sends JournaldEntry datagrams to journald; falls back to a JSON line on `fallback`."""

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

    def send(self, entry: JournaldEntry) -> None:
        try:
            try:
                self._sock.sendto(entry.payload, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(entry.payload)
        except OSError as exc:
            self._write_fallback(entry, exc)

    def _write_fallback(self, entry: JournaldEntry, exc: OSError) -> None:
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

    def msg(self, entry: JournaldEntry) -> None:
        self.send(entry)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def close(self) -> None:
        self._sock.close()


class JournaldLoggerFactory:
    """structlog logger_factory: every logger shares one journal socket."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None) -> None:
        self.logger = JournaldLogger(path, fallback)

    def __call__(self, *_args: Any) -> JournaldLogger:
        return self.logger
