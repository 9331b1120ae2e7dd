"""The simulator's run: start the fleet, let it idle, send tasks, restart the broker.

Phases, each measured at the broker (meter.py) and in the process:

1. start: N devices connect at once (their first heartbeat, status and discovery);
2. steady: nothing but heartbeats for `steady_s` (the fleet's standing load);
3. tasks: per-device and fleet ($share) tasks at `rate` per second, until every one is
   answered (latency, answered once, the share each device took);
4. restart (own broker only): the broker stops (SIGTERM: it saves sessions and retained
   messages), stays down `down_s` and starts again; the figure is the time from its
   return until every device is connected again, and how many connected in the same
   100 ms (a herd connects together; jittered backoff spreads them).

Everything here runs on the event loop the devices share; the broker's start and stop
(blocking) run on a thread.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edgeagent.fleetsim import pollselect
from edgeagent.fleetsim.broker import Broker, raise_fd_limit
from edgeagent.fleetsim.fleet import SimFleet
from edgeagent.fleetsim.meter import Meter, Reading, rates
from edgeagent.fleetsim.requester import REPLY_PREFIX, Requester, percentile

MIB = 2**20
FDS_PER_DEVICE = 12  # socket, paho's socket pair, the journal's files, headroom
SETTLE_S = 2.0  # after a phase, for the last retained publishes to reach the meter
HERD_BUCKET_S = 0.1
SYS_WAIT_S = 2.5


@dataclass
class Plan:
    devices: int
    latency_s: float = 0.1
    device_tasks: int = 1  # per device
    fleet_tasks: int | None = None  # default: 2 per device
    rate: float = 100.0  # tasks per second
    steady_s: float = 20.0
    down_s: float = 2.0
    connect_timeout_s: float = 180.0
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 1

    @property
    def fleet_task_count(self) -> int:
        return 2 * self.devices if self.fleet_tasks is None else self.fleet_tasks


def _process() -> dict[str, float]:
    gc.collect()
    proc = psutil.Process()
    return {
        "rss_mb": proc.memory_info().rss / MIB,
        "threads": proc.num_threads(),
        "fds": proc.num_fds(),
    }


def _seconds(times: list[tuple[float, float] | None]) -> dict[str, Any]:
    """When the devices were connected (CONNACK), and how many CONNECTs the broker got in
    its busiest 100 ms (a herd: the attempts that succeeded, at one instant)."""
    got = [t for t in times if t is not None]
    connected = [c for _, c in got]
    attempts = Counter(int(a / HERD_BUCKET_S) for a, _ in got)
    return {
        "all_online_s": round(max(connected), 2) if got and len(got) == len(times) else None,
        "p50_s": None if not got else round(percentile(connected, 0.5) or 0.0, 2),
        "online": len(got),
        "peak_connects_per_100ms": max(attempts.values(), default=0),
    }


async def _reading(meter: Meter, *, since: float) -> Reading:
    """A reading whose $SYS values came after `since` (mosquitto sends them once a second;
    an external broker may send none: then after SYS_WAIT_S without them)."""
    deadline = time.monotonic() + SYS_WAIT_S
    reading = meter.reading()
    while (reading.sys_at is None or reading.sys_at <= since) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        reading = meter.reading()
    return reading


class CpuClock:
    """CPU time of this process (every simulated device) and of the broker, per phase, in
    per cent of one core."""

    def __init__(self, broker_pid: int | None) -> None:
        self._broker_pid = broker_pid
        self._wall, self._own, self._broker = self._sample()

    def _sample(self) -> tuple[float, float, float | None]:
        own = psutil.Process().cpu_times()
        broker: float | None = None
        if self._broker_pid is not None:
            try:
                times = psutil.Process(self._broker_pid).cpu_times()
                broker = times.user + times.system
            except psutil.Error:
                broker = None
        return time.monotonic(), own.user + own.system, broker

    def lap(self, broker_pid: int | None = None) -> dict[str, float | None]:
        """Since the last lap; `broker_pid`: a restarted broker, whose time starts at 0."""
        if broker_pid is not None and broker_pid != self._broker_pid:
            self._broker_pid, self._broker = broker_pid, 0.0
        wall, own, broker = self._sample()
        seconds = max(wall - self._wall, 1e-9)
        broker_pct = None
        if broker is not None and self._broker is not None:
            broker_pct = round(100 * (broker - self._broker) / seconds, 1)
        simulator_pct = round(100 * (own - self._own) / seconds, 1)
        self._wall, self._own, self._broker = wall, own, broker
        return {"simulator_pct": simulator_pct, "broker_pct": broker_pct}


class Run:
    def __init__(self, plan: Plan, workdir: Path, *, host: str | None, port: int) -> None:
        self.plan = plan
        self.workdir = workdir
        self.broker = None if host is not None else Broker(workdir / "broker", clients=plan.devices)
        self.host = host or "127.0.0.1"
        self.port = port if self.broker is None else self.broker.port
        self.report: dict[str, Any] = {"devices": plan.devices}

    async def execute(self) -> dict[str, Any]:
        plan = self.plan
        self.report["fd_limit"] = raise_fd_limit(FDS_PER_DEVICE * plan.devices + 1024)
        pollselect.install()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.start)
            self.report["broker"] = self.broker.version()
        prefix = str(plan.settings.get("mqtt", {}).get("topic_prefix", "edgeagent"))
        discovery = str(plan.settings.get("homeassistant", {}).get("prefix", "homeassistant"))
        meter = Meter(
            self.host,
            self.port,
            prefix=prefix,
            discovery_prefix=discovery,
            reply_prefix=REPLY_PREFIX,
        )
        requester = Requester(self.host, self.port, prefix=prefix)
        fleet: SimFleet | None = None
        try:
            await asyncio.to_thread(requester.wait_subscribed, 10)
            before = _process()
            fleet = SimFleet(
                plan.devices,
                workdir=self.workdir / "devices",
                host=self.host,
                port=self.port,
                latency_s=plan.latency_s,
                settings=plan.settings,
            )
            await self._phases(fleet, meter, requester, before)
        finally:
            if fleet is not None:
                await fleet.stop()
            requester.close()
            meter.close()
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)
        return self.report

    async def _phases(
        self, fleet: SimFleet, meter: Meter, requester: Requester, before: dict[str, float]
    ) -> None:
        plan, report = self.plan, self.report
        cpu = CpuClock(self.broker.pid if self.broker is not None else None)
        start = meter.reading()
        fleet.start()
        times = await fleet.wait_connected(
            [0] * plan.devices, origin=start.at, within_s=plan.connect_timeout_s
        )
        await asyncio.sleep(SETTLE_S)
        started = await _reading(meter, since=start.at)
        report["start"] = {
            **_seconds(times),
            "traffic": rates(start, started),
            "cpu": cpu.lap(),
        }
        await asyncio.sleep(plan.steady_s)
        tasks_start = await _reading(meter, since=started.at)
        report["steady"] = {"traffic": rates(started, tasks_start), "cpu": cpu.lap()}
        await self._tasks(fleet, requester)
        report["tasks"] = {
            **requester.summary(fleet.ids),
            "traffic": rates(tasks_start, await _reading(meter, since=tasks_start.at)),
            "cpu": cpu.lap(),
        }
        after = _process()
        report["retained"] = meter.sys_value("retained")
        report["memory"] = {
            "rss_mb_before": round(before["rss_mb"], 1),
            "rss_mb_after": round(after["rss_mb"], 1),
            "per_device_kb": round((after["rss_mb"] - before["rss_mb"]) * 1024 / plan.devices, 1),
            "threads": int(after["threads"]),
            "fds": int(after["fds"]),
            "broker_rss_mb": self._broker_rss(),
        }
        if self.broker is not None:
            await self._restart(fleet, meter, cpu)
        report["crashed"] = fleet.crashed()

    async def _tasks(self, fleet: SimFleet, requester: Requester) -> None:
        plan = self.plan
        targets: list[str | None] = [d for d in fleet.ids for _ in range(plan.device_tasks)]
        targets += [None] * plan.fleet_task_count
        random.Random(plan.seed).shuffle(targets)  # noqa: S311 - an order, not a secret
        began = time.monotonic()
        sent = 0
        while sent < len(targets):
            due = min(len(targets), int((time.monotonic() - began) * plan.rate) + 1)
            for target in targets[sent:due]:
                requester.send(target)
            sent = due
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 60 + 10 * plan.latency_s * plan.device_tasks
        # Polled: the replies arrive on the requester's network thread.
        while requester.outstanding() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE_S)  # a duplicate reply would arrive by now

    async def _restart(self, fleet: SimFleet, meter: Meter, cpu: CpuClock) -> None:
        if self.broker is None:
            return
        plan = self.plan
        since = fleet.connects()
        await asyncio.to_thread(self.broker.stop)
        await asyncio.sleep(plan.down_s)
        await asyncio.to_thread(self.broker.start)
        cpu.lap(self.broker.pid)  # from the broker's return
        now = meter.reading()
        # The broker's $SYS counters start again from 0 with it.
        back = Reading(now.at, now.messages, now.bytes, dict.fromkeys(now.sys, 0.0))
        times = await fleet.wait_connected(since, origin=now.at, within_s=plan.connect_timeout_s)
        await asyncio.sleep(SETTLE_S)
        self.report["restart"] = {
            "down_s": plan.down_s,
            **_seconds(times),
            "traffic": rates(back, await _reading(meter, since=back.at)),
            "cpu": cpu.lap(),
        }

    def _broker_rss(self) -> float | None:
        if self.broker is None or self.broker.pid is None:
            return None
        try:
            return round(psutil.Process(self.broker.pid).memory_info().rss / MIB, 1)
        except psutil.Error:
            return None
