"""Publishes waiting for their PUBACK: the future of each, by packet id.

paho reports a PUBACK on its own thread, and it can arrive before publish() has returned
the packet id to us: an outcome with no future yet is remembered until the future is
registered. The bookkeeping is shared by the two threads under one lock; futures are
only ever completed on the event loop (the link hands `complete_publish` over with
call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from edgeagent.mqtt.refusals import PublishRefused, refusal


class Pubacks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # mid -> future of a publish waiting for PUBACK; mid -> outcome of a PUBACK that
        # came before its future was registered.
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early: dict[int, PublishRefused | None] = {}
        self.refusals = 0  # PUBACKs with a failure reason code (metrics)

    def acked(
        self, mid: int, reason_code: Any
    ) -> tuple[asyncio.Future[None], PublishRefused | None] | None:
        """On paho's thread: the future to complete and how, or None (remembered early)."""
        outcome = refusal(reason_code)
        if outcome is not None:
            self.refusals += 1  # paho's thread is the only writer
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early[mid] = outcome
                return None
        return future, outcome

    def expect(self, mid: int, future: asyncio.Future[None]) -> None:
        """On the event loop, once paho returned the mid: completed now if its PUBACK came
        first, else when it comes."""
        with self._lock:
            if mid in self._early:
                complete_publish(future, self._early.pop(mid))
            else:
                self._pending[mid] = future


def complete_publish(future: asyncio.Future[None], outcome: PublishRefused | None) -> None:
    """The publish's future resolved by its PUBACK: None, or the broker's refusal."""
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


def ignore_result(future: asyncio.Future[None]) -> None:
    """A done callback for a publish nobody waits for (the status, a heartbeat, Home
    Assistant's last_action): a lost one is not worth more than marking it retrieved."""
    if not future.cancelled():
        future.exception()
