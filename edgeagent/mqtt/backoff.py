"""Reconnect delays: full jitter over a window that grows with the outage.

After a broker restart every device of a fleet loses its connection in the same instant.
With a fixed schedule (paho's own: 1 s, then doubling) they all retry in the same instant
too, and all connect together when the broker is back: N CONNECTs (N TLS handshakes), then
N times the heartbeat, status and discovery burst, at once. Here each wait is drawn at
random from [0, window] ("full jitter"), so the fleet's retries spread over the window,
and the first wait, the one the whole fleet shares, is random too.

The window is the time since the connection was lost (at least `base_s`, at most
`max_s`), not base * 2^attempts: each wait is on average half the outage so far, so the
waits still grow exponentially (the outage grows by half with each attempt, on average),
but no device's window outgrows the outage by bad luck. With windows that double per
attempt, a device whose first draws were short has made several attempts when the broker
returns, and then waits up to 2^attempts: in a 1,000-device simulation of a 2.5 s outage
that variant had its last device back 19 s after the broker, this one within 2.5 s
(docs/scale.md has the measured fleet).

The outage ends only with a connection that held for STABLE_S: a broker that accepts and
drops a device at once (a client-id takeover, an ACL, an overload) sees it back off
further instead of reconnecting at the first window's rate forever.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol

STABLE_S = 60.0


class Backoff:
    def __init__(
        self,
        base_s: float,
        max_s: float,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"need 0 < base_s <= max_s, not {base_s} and {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._lost_at: float | None = None  # when the last stable connection ended
        # Jitter, not a secret; one generator per link, so devices do not share a sequence.
        self._rng = rng or random.Random()  # noqa: S311

    def window(self) -> float:
        """The upper bound of the next wait: the outage so far, within [base_s, max_s]."""
        outage = 0.0 if self._lost_at is None else self._clock() - self._lost_at
        return min(self.max_s, max(self.base_s, outage))

    def next_delay(self) -> float:
        """The wait before the next connection attempt."""
        if self._lost_at is None:
            self._lost_at = self._clock()
        return self._rng.uniform(0.0, self.window())

    def connected(self, held_s: float) -> None:
        """A connection ended after `held_s`: only a stable one ended the outage."""
        if held_s >= STABLE_S:
            self._lost_at = None


class DelaySetter(Protocol):
    """paho's client: its reconnect wait is `min_delay` after a reset (which this is)."""

    def reconnect_delay_set(self, min_delay: int = 1, max_delay: int = 120) -> None: ...


class ReconnectSchedule:
    """Sets paho's next reconnect wait from a Backoff. Both calls run on paho's thread:
    `connected` at an accepting CONNACK, `before_wait` when a connection was lost or an
    attempt failed, before paho waits."""

    def __init__(self, backoff: Backoff, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self._clock = clock
        self._up_since: float | None = None  # the live connection's CONNACK time

    def connected(self) -> None:
        self._up_since = self._clock()

    def before_wait(self, client: DelaySetter) -> float:
        """Set and return the wait; paho then waits exactly that long (both bounds)."""
        up_since, self._up_since = self._up_since, None
        if up_since is not None:
            self.backoff.connected(self._clock() - up_since)
        delay = self.backoff.next_delay()
        # paho's hint says int; its wait is float arithmetic and time.sleep.
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        return delay
