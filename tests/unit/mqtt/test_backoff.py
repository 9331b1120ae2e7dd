"""Reconnect delays: full-jitter exponential backoff, and the link's paho waiting them.

The link test runs a real paho client's network thread against a loopback port nobody
listens on (connection refused at once), so the gaps between its connection attempts are
the waits the link set, not anything this test scripted.
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import time

import pytest

from edgeagent.config import MqttConfig
from edgeagent.mqtt.backoff import STABLE_S, Backoff
from edgeagent.mqtt.link import MqttLink


def test_windows_double_from_the_base_up_to_the_cap_and_delays_stay_inside():
    backoff = Backoff(1.0, 30.0, rng=random.Random(1))
    windows, delays = [], []
    for _ in range(8):
        windows.append(backoff.window())
        delays.append(backoff.next_delay())
    assert windows == [1, 2, 4, 8, 16, 30, 30, 30]
    assert all(0 <= d <= w for d, w in zip(delays, windows, strict=True))


def test_the_first_delay_is_spread_over_its_window_not_shared_by_the_fleet():
    """What a fleet does when the broker drops everyone at once: 1,000 devices, one
    generator each. paho's own schedule would give all of them 1.0 s."""
    firsts = [Backoff(1.0, 30.0, rng=random.Random(seed)).next_delay() for seed in range(1000)]
    buckets = [sum(1 for d in firsts if i / 10 <= d < (i + 1) / 10) for i in range(10)]
    assert min(buckets) > 60, buckets  # ~100 in each tenth of the window
    assert max(buckets) < 140, buckets
    assert 0.45 < statistics.mean(firsts) < 0.55


def test_only_a_stable_connection_starts_the_count_again():
    backoff = Backoff(1.0, 30.0, rng=random.Random(2))
    for _ in range(3):
        backoff.next_delay()
    backoff.connected(held_s=2.0)  # accepted and dropped at once: keep backing off
    assert backoff.window() == 8
    backoff.connected(held_s=STABLE_S)
    assert backoff.window() == 1


def test_a_huge_attempt_count_stays_at_the_cap():
    backoff = Backoff(0.5, 120.0)
    backoff.attempt = 10_000
    assert backoff.window() == 120
    assert 0 <= backoff.next_delay() <= 120


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_bounds_are_checked(base, cap):
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base, cap)


def test_the_config_keeps_the_cap_above_the_base():
    with pytest.raises(ValueError, match="reconnect_max_s"):
        MqttConfig(reconnect_base_s=40, reconnect_max_s=30)


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nobody listens there


def test_the_link_waits_its_backoff_between_paho_attempts():
    """The gaps between paho's connection attempts are the backoff's delays, seeded the
    same: the link, not paho's fixed doubling, decides them."""
    seed, attempts_wanted = 11, 6
    expected = Backoff(0.05, 0.4, rng=random.Random(seed))
    delays = [expected.next_delay() for _ in range(attempts_wanted - 1)]

    async def scenario() -> list[float]:
        cfg = MqttConfig(host="127.0.0.1", port=_refused_port())
        link = MqttLink(
            cfg,
            client_id="backoff-test",
            subscriptions=[],
            will_topic="t/status",
            backoff=Backoff(0.05, 0.4, rng=random.Random(seed)),
        )
        attempts: list[float] = []
        stamp_generation = link._client.on_pre_connect  # noqa: SLF001 - the link's own hook
        assert stamp_generation is not None

        def pre_connect(client, userdata):
            attempts.append(time.monotonic())
            stamp_generation(client, userdata)

        link._client.on_pre_connect = pre_connect  # noqa: SLF001
        link.start(lambda _m: None)
        try:
            deadline = time.monotonic() + 10
            while len(attempts) < attempts_wanted and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            link.stop()
        return attempts

    attempts = asyncio.run(scenario())
    assert len(attempts) >= attempts_wanted
    gaps = [b - a for a, b in zip(attempts, attempts[1:attempts_wanted], strict=False)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - 0.005 <= gap <= delay + 0.1, (gaps, delays)
