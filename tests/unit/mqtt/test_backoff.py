"""Reconnect delays: full jitter over a window that grows with the outage, and the link's
paho waiting them.

The fleet tests play N devices against one outage on a fake clock: every device retries
after its own backoff's waits until the broker is back. The link test runs a real paho
client's network thread against a loopback port nobody listens on (connection refused at
once), so the gaps between its attempts are the waits the link set, nothing scripted.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import statistics
import threading
import time
from collections import Counter

import pytest

from edgeagent.config import MqttConfig
from edgeagent.mqtt.backoff import STABLE_S, Backoff
from edgeagent.mqtt.link import MqttLink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fleet_after_outage(devices: int, outage_s: float, base_s: float = 1.0) -> list[float]:
    """Seconds after the broker's return at which each device connects again."""
    back = []
    for seed in range(devices):
        clock = Clock()
        lost = clock.now
        backoff = Backoff(base_s, 30.0, rng=random.Random(seed), clock=clock)
        while clock.now - lost < outage_s:  # each attempt before the return is refused
            clock.now += backoff.next_delay()
        back.append(clock.now - lost - outage_s)
    return back


@pytest.mark.parametrize("outage_s", [0.5, 2.5, 10.0])
def test_a_fleet_comes_back_spread_out_and_within_the_outage(outage_s):
    """paho's schedule (1 s, doubling) brings all 1,000 back in the same instant; windows
    doubling per attempt spread them but left the last one 19 s behind a 2.5 s outage."""
    back = _fleet_after_outage(1000, outage_s)
    herd = Counter(int(t / 0.1) for t in back)
    assert max(herd.values()) < 250, herd.most_common(3)  # of 1,000 in any 100 ms
    assert max(back) <= max(outage_s, 1.0)  # the window never outgrows the outage


def test_the_first_delay_is_spread_over_its_window_not_shared_by_the_fleet():
    firsts = [Backoff(1.0, 30.0, rng=random.Random(seed)).next_delay() for seed in range(1000)]
    buckets = [sum(1 for d in firsts if i / 10 <= d < (i + 1) / 10) for i in range(10)]
    assert min(buckets) > 60, buckets  # ~100 in each tenth of the window
    assert max(buckets) < 140, buckets
    assert 0.45 < statistics.mean(firsts) < 0.55


def test_the_window_is_the_outage_so_far_within_base_and_max():
    clock = Clock()
    backoff = Backoff(1.0, 30.0, rng=random.Random(3), clock=clock)
    assert backoff.window() == 1.0
    delays = []
    for elapsed in (0.0, 0.5, 4.0, 12.0, 100.0):
        clock.now = 1000.0 + elapsed
        window = backoff.window()
        delays.append(backoff.next_delay())
        assert window == min(30.0, max(1.0, elapsed))
        assert 0 <= delays[-1] <= window
    assert len(set(delays)) == len(delays)


def test_only_a_stable_connection_ends_the_outage():
    clock = Clock()
    backoff = Backoff(1.0, 30.0, rng=random.Random(2), clock=clock)
    backoff.next_delay()
    clock.now += 8.0
    backoff.connected(held_s=2.0)  # accepted and dropped at once: keep backing off
    assert backoff.window() == 8.0
    backoff.connected(held_s=STABLE_S)
    assert backoff.window() == 1.0


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


class Recorder:
    """A Backoff that records the delays it hands out."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.delays: list[float] = []

    def next_delay(self) -> float:
        self.delays.append(self.backoff.next_delay())
        return self.delays[-1]

    def connected(self, held_s: float) -> None:
        self.backoff.connected(held_s)


def test_the_link_waits_its_backoff_between_paho_attempts():
    """The gaps between paho's connection attempts are the backoff's delays: the link,
    not paho's fixed doubling (1 s, 2 s, 4 s, ...), decides them."""
    recorder = Recorder(Backoff(0.05, 0.3, rng=random.Random(11)))

    async def scenario() -> list[float]:
        cfg = MqttConfig(host="127.0.0.1", port=_refused_port())
        link = MqttLink(
            cfg,
            client_id="backoff-test",
            subscriptions=[],
            will_topic="t/status",
            backoff=recorder,  # type: ignore[arg-type]
        )
        attempts: list[float] = []
        enough = threading.Event()
        stamp_generation = link._client.on_pre_connect  # the link's own hook
        assert stamp_generation is not None

        def pre_connect(client, userdata):
            attempts.append(time.monotonic())
            if len(attempts) >= 8:
                enough.set()
            stamp_generation(client, userdata)

        link._client.on_pre_connect = pre_connect
        link.start(lambda _m: None)
        try:
            await asyncio.to_thread(enough.wait, 10)
        finally:
            link.stop()
        return attempts[:8]

    attempts = asyncio.run(scenario())
    assert len(attempts) == 8
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for gap, delay in zip(gaps, recorder.delays, strict=False):
        assert delay - 0.005 <= gap <= delay + 0.1, (gaps, recorder.delays)
