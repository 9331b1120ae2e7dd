from __future__ import annotations

import asyncio
import contextlib
import json

from structlog.testing import capture_logs
from support.fake_engine import FakeDecision, FakeEngine, FakeMemory, FakeNotifier
from support.fake_link import FakeLink
from support.service_parts import make_daemon

from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.views.telemetry import Counters, Telemetry

HEARTBEAT = "edgeagent/dev1/heartbeat"


class Store:
    degraded: str | None = None


class Harness:
    def __init__(self) -> None:
        self.link = FakeLink()
        self.notifier = FakeNotifier()
        self.queue: TaskQueue[str] = TaskQueue(4)
        self.engine = FakeEngine()
        self.engine.n_ctx = 1024
        self.memory = FakeMemory()
        self.store = Store()
        self.telemetry = Telemetry(
            device="dev1",
            topics=Topics("edgeagent", "dev1", "edgeagent"),
            link=self.link,
            notifier=self.notifier,
            queue=self.queue,
            engine=self.engine,
            memory=self.memory,
            store=self.store,
            period_s=3600,
            wall_clock=lambda: 1764403200.12345,
            memory_usage=lambda: {"rss_mb": 612.3, "host_available_mb": 2210.0},
        )
        self.set_state("serving")

    def set_state(self, state: str) -> None:
        """The daemon's transition, without the STATUS= it sends (tests count those)."""
        self.telemetry.state_changed(state)
        self.notifier.sent.clear()


def test_tokens_per_s_over_the_recent_tasks():
    counters = Counters()
    assert counters.tokens_per_s() is None
    for _ in range(25):
        counters.recent.append((10, 1.0))
    counters.recent.append((30, 1.0))
    assert len(counters.recent) == 20
    assert counters.tokens_per_s() == 11.0


def test_heartbeat_body():
    h = Harness()
    h.queue.offer("a")
    h.telemetry.record_answer(completion_tokens=40, decode_s=2.0)
    h.telemetry.record_failure()
    h.telemetry.counters.busy = 3
    assert h.telemetry.heartbeat() == {
        "device": "dev1",
        "state": "serving",
        "ts": 1764403200.123,
        "queue": {"depth": 1, "capacity": 4},
        "tasks": {"done": 1, "failed": 1, "busy": 3},
        "tokens_per_s": 20.0,
        "context": {"n_ctx": 1024, "state": "normal", "budget": 2048},
        "memory": {"rss_mb": 612.3, "host_available_mb": 2210.0},
        "store": {"state": "ok"},
    }
    h.store.degraded = "finish: disk I/O error"
    assert h.telemetry.heartbeat()["store"] == {
        "state": "degraded",
        "reason": "finish: disk I/O error",
    }


def test_status_line_names_budget_pause_reason_and_a_degraded_store():
    h = Harness()
    assert h.telemetry.status_line() == (
        "serving; queue 0/4; ctx 1024 (budget 2048, config); done 0 failed 0; - tok/s"
    )
    h.set_state("paused")
    h.memory.decision = FakeDecision(paused=True, reason="available 80 MB < min")
    h.store.degraded = "accept: database or disk is full"
    assert h.telemetry.status_line().endswith(
        "; available 80 MB < min; task store degraded: exactly-once not guaranteed"
    )
    h.memory.decision = None
    assert "budget" not in h.telemetry.status_line()
    h.telemetry.refresh_status()
    assert h.notifier.statuses == [h.telemetry.status_line()]


def test_heartbeat_is_published_retained_only_while_connected():
    async def scenario():
        h = Harness()
        h.telemetry.publish_heartbeat()
        assert h.link.published == []  # a stale heartbeat is not queued for later
        h.link.connected.set()
        h.telemetry.publish_heartbeat()
        (beat,) = h.link.on(HEARTBEAT)
        assert beat.retain
        assert json.loads(beat.payload)["device"] == "dev1"

    asyncio.run(scenario())


def test_a_reading_the_model_does_not_describe_skips_one_heartbeat_not_the_daemon():
    async def scenario():
        h = Harness()
        h.link.connected.set()
        h.telemetry._memory_usage = lambda: {"rss_mb": 1.0, "swap_mb": 2.0}  # an unknown key
        with capture_logs() as logs:
            h.telemetry.publish_heartbeat()  # does not raise
        assert h.link.on(HEARTBEAT) == []
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "heartbeat not published: a reading does not fit its model"
        ]
        h.telemetry._memory_usage = lambda: {"rss_mb": 1.0, "host_available_mb": 2.0}
        h.telemetry.publish_heartbeat()
        assert len(h.link.on(HEARTBEAT)) == 1

    asyncio.run(scenario())


def test_the_loop_publishes_and_updates_the_status():
    async def scenario():
        h = Harness()
        h.link.connected.set()
        loop = asyncio.create_task(h.telemetry.run())
        await h.link.wait_for_publish(HEARTBEAT)
        loop.cancel()
        assert h.notifier.statuses

    asyncio.run(scenario())


STATUS = "edgeagent/dev1/status"


class SlowLoad(FakeEngine):
    """A model that takes until `loaded` is set to load."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = asyncio.Event()

    async def start(self, n_ctx: int | None = None) -> None:
        await self.loaded.wait()
        await super().start(n_ctx)


def _position(link: FakeLink, topic: str, predicate) -> int:
    return next(i for i, p in enumerate(link.published) if p.topic == topic and predicate(p))


def test_the_heartbeat_says_loading_serving_draining_and_stopped_when_they_happen():
    """Home Assistant's State entity sees every transition: connected while the model
    loads, a heartbeat on each change, `stopped` before `offline` and the disconnect."""

    async def scenario():
        engine = SlowLoad()
        daemon = make_daemon(engine=engine)
        link = daemon.link
        serving = asyncio.create_task(daemon.serve())
        (first,) = await link.wait_for_publish(HEARTBEAT)
        assert (first.body["state"], first.retain) == ("loading", True)
        # The heartbeat of this run goes out before `online` makes the old one look live.
        assert _position(link, HEARTBEAT, lambda _: True) < _position(
            link, STATUS, lambda p: p.payload == "online"
        )
        engine.loaded.set()
        await link.wait_until(lambda: "serving" in [b["state"] for b in link.bodies(HEARTBEAT)])
        daemon.request_stop()
        assert await serving == 0
        states = [b["state"] for b in link.bodies(HEARTBEAT)]
        assert states[0] == "loading"
        assert states.index("serving") < states.index("draining") < states.index("stopped")
        assert states[-1] == "stopped"
        last_beat = _position(link, HEARTBEAT, lambda p: p.body["state"] == "stopped")
        assert last_beat < _position(link, STATUS, lambda p: p.payload == "offline")

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_heartbeat_goes_out_on_every_connect():
    """After a (re)connect Home Assistant gets this run's counters at once, not the
    previous run's until the next period (an hour here)."""

    async def scenario():
        daemon = make_daemon()
        link = daemon.link
        serving = asyncio.create_task(daemon.serve())
        await link.wait_until(lambda: "serving" in [b["state"] for b in link.bodies(HEARTBEAT)])
        beats = len(link.on(HEARTBEAT))
        link.disconnect()
        link.reconnect()
        assert len(link.on(HEARTBEAT)) == beats + 1
        assert link.on(HEARTBEAT)[-1].body["state"] == "serving"
        daemon.request_stop()
        assert await serving == 0

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_heartbeat_periods_are_jittered_so_a_fleet_started_together_drifts_apart(monkeypatch):
    """Each wait is the period times a random factor in [0.9, 1.1]: 500 devices started in
    the same second do not beat in the same second forever (docs/scale.md)."""
    waits: list[float] = []

    async def recorded_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 200:
            raise asyncio.CancelledError

    async def scenario():
        h = Harness()
        h.link.connected.set()
        monkeypatch.setattr("edgeagent.service.views.telemetry.asyncio.sleep", recorded_sleep)
        with contextlib.suppress(asyncio.CancelledError):
            await h.telemetry.run()

    asyncio.run(scenario())
    assert all(3600 * 0.9 <= w <= 3600 * 1.1 for w in waits)
    assert max(waits) - min(waits) > 3600 * 0.15  # spread over most of the +-10 %
