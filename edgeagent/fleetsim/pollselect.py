"""select.select() on poll(): what lets one process hold hundreds of paho clients.

paho-mqtt's network loop waits in select.select(), which cannot watch a file descriptor
above FD_SETSIZE (1024): Python raises ValueError, and paho takes that for a lost
connection and reconnects, forever. A daemon has one client and a few dozen descriptors,
so it never meets the limit; the simulator has ~6 descriptors per device (the socket,
paho's wake-up socket pair, the SQLite journal's files) and passes 1024 at ~170 devices.
`install()` gives paho's module a `select` with the same call on poll(), which has no
such limit; only the simulator installs it.
"""

from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho_client

_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR


def _fd(obj: Any) -> int:
    fd = obj if isinstance(obj, int) else obj.fileno()
    if fd < 0:  # a closed socket: select() raises ValueError, and paho relies on it
        raise ValueError("file descriptor cannot be a negative integer")
    return int(fd)


def poll_select(
    rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """select.select's contract (the objects given, ready ones back) on poll()."""
    poller = select.poll()
    masks: dict[int, int] = {}
    for obj in rlist:
        masks[_fd(obj)] = masks.get(_fd(obj), 0) | select.POLLIN | select.POLLPRI
    for obj in wlist:
        masks[_fd(obj)] = masks.get(_fd(obj), 0) | select.POLLOUT
    for fd, mask in masks.items():
        poller.register(fd, mask)
    events = dict(poller.poll(None if timeout is None else max(timeout, 0.0) * 1000))
    readable = [obj for obj in rlist if events.get(_fd(obj), 0) & _READ]
    writable = [obj for obj in wlist if events.get(_fd(obj), 0) & _WRITE]
    exceptional = [obj for obj in xlist if events.get(_fd(obj), 0) & select.POLLPRI]
    return readable, writable, exceptional


class _PollModule:
    """Stands in for the `select` module inside paho.mqtt.client."""

    select = staticmethod(poll_select)
    error = OSError


def install() -> None:
    """Make every paho client of this process wait in poll() instead of select()."""
    paho_client.select = _PollModule  # type: ignore[attr-defined,assignment]
