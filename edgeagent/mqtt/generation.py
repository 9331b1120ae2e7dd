"""The connection generation: which connection a message came on, so its ack goes out on
that one or not at all.

A packet id from a dropped connection must never be acked on the next one, where it may
name a different message. The link advances the generation on paho's thread when a
connection is lost and right before a new one is opened (on_pre_connect, after paho
dropped the packets still queued for the old socket); an ack checks it and queues its
PUBACK under the same lock, so a reconnect cannot slip in between the check and the send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Generation:
    """A counter shared by paho's thread (advance, stamp) and the event loop (ack)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = 0

    def advance(self) -> None:
        with self._lock:
            self._current += 1

    def current(self) -> int:
        with self._lock:
            return self._current

    def if_current(self, generation: int, send: Callable[[], bool]) -> bool:
        """`send()`, under the lock, when `generation` is still the connection's; False
        when it is gone (the broker delivers the message again)."""
        with self._lock:
            if generation != self._current:
                return False
            return send()
