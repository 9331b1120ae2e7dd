"""Reconnect delays: exponential backoff with full jitter.

After a broker restart every device of a fleet loses its connection in the same instant.
With a fixed schedule (paho's own: 1 s, then doubling) they all retry in the same instant
too, and all connect together when the broker is back: N CONNECTs (N TLS handshakes),
then N times the heartbeat, status and discovery burst, at once. Full jitter draws each
delay at random from [0, min(max, base * 2^attempt)] (the "Full Jitter" of AWS's
"Exponential Backoff and Jitter"), so retries spread over the window and the window
still grows while the broker stays away. The first delay is random too: that is the one
the whole fleet shares.

The attempt count restarts only after a connection that held for STABLE_S: a broker that
accepts and drops a device at once (a client-id takeover, an ACL, an overload) sees that
device back off instead of reconnecting at the first window's rate forever.
"""

from __future__ import annotations

import random

STABLE_S = 60.0
_MAX_DOUBLINGS = 32  # 2**32 * base is past any cap; keeps the power finite


class Backoff:
    def __init__(self, base_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"need 0 < base_s <= max_s, not {base_s} and {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self.attempt = 0
        # Jitter, not a secret; one generator per link, so devices do not share a sequence.
        self._rng = rng or random.Random()  # noqa: S311

    def window(self) -> float:
        """The upper bound of the next delay."""
        return min(self.max_s, self.base_s * 2.0 ** min(self.attempt, _MAX_DOUBLINGS))

    def next_delay(self) -> float:
        """The wait before the next connection attempt (and count the attempt)."""
        delay = self._rng.uniform(0.0, self.window())
        self.attempt += 1
        return delay

    def connected(self, held_s: float) -> None:
        """A connection ended after `held_s`: a stable one starts the count again."""
        if held_s >= STABLE_S:
            self.attempt = 0
