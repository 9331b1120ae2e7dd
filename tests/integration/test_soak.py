"""Crash soak: tasks keep coming while the daemon is SIGKILLed and the broker restarted.

Real mosquitto (persistent sessions), real SmolLM2, `edgeagent run` as a process that
is SIGKILLed at random moments and started again at once (as systemd's Restart= does).
Tasks with and without ids, schema tasks, actions with `dispatch = true` and without.
A subscriber counts replies per task and action messages per task; the verdict:

* every task answered exactly once (no task lost, none answered twice);
* every answered `dispatch = true` action published exactly once, no other action.

Counting is about the daemon, not the subscriber's own link: a message the broker
re-sends to the subscriber (DUP set, same payload, after the broker restarted) is
counted once. A daemon duplicate arrives as a new message (DUP clear).

The short version runs with the suite; `pytest -m soak tests/integration/test_soak.py`
runs the long one (>= 200 tasks, >= 10 kills, >= 2 broker restarts) and prints its
figures.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.daemon import DaemonProcess, write_config
from support.mosquitto import Mosquitto

pytestmark = [pytest.mark.model, pytest.mark.mqtt, pytest.mark.slow]

REPLIES = "replies/soak"
ACTIONS = "edgeagent/dev1/actions/#"
TASKS = "edgeagent/dev1/tasks"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}
CITIES = ["Porto", "Lisbon", "Faro", "Braga", "Evora", "Coimbra", "Aveiro", "Beja"]


@dataclass(frozen=True)
class Plan:
    tasks: int
    kills: int
    broker_restarts: int
    seed: int = 10


@dataclass
class Seen:
    """What the subscriber received, with the broker's own re-sends folded in."""

    replies: list[dict[str, Any]] = field(default_factory=list)  # body + "_corr"
    actions: list[dict[str, Any]] = field(default_factory=list)
    resent_by_broker: int = 0
    _keys: set[tuple[str, bytes, bytes]] = field(default_factory=set)

    def add(self, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", b"") or b""
        key = (msg.topic, bytes(msg.payload), bytes(correlation))
        if msg.dup and key in self._keys:
            self.resent_by_broker += 1
            return
        self._keys.add(key)
        body = json.loads(msg.payload)
        if msg.topic == REPLIES:
            self.replies.append({**body, "_corr": bytes(correlation).decode()})
        else:
            self.actions.append(body)


class Client:
    """A persistent-session MQTT v5 client that reconnects by itself."""

    def __init__(self, port: int, on_message: Any = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"soak-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if on_message is not None:
            self.client.on_message = lambda _c, _u, msg: on_message(msg)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        self.wait_connected()

    def wait_connected(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            assert time.monotonic() < deadline, "no connection to the broker"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def task_payload(n: int, rng: random.Random) -> dict[str, Any]:
    city = CITIES[n % len(CITIES)]
    kind = rng.choice(["schema", "dispatch", "notify"])
    if kind == "schema":
        body: dict[str, Any] = {"input": f"{city} reports {10 + n % 25} degrees.", "schema": SCHEMA}
    elif kind == "dispatch":
        body = {
            "input": f"Zone {1 + n % 8} is dry: water it {5 + n % 30} minutes.",
            "action": "set_irrigation",
        }
    else:
        body = {
            "input": f"Sensor {n}: frost warning for {city}.",
            "actions": ["notify", "no_action"],
        }
    if rng.random() < 0.5:
        body["id"] = f"soak-{n}"
    return body


def publish_task(publisher: Client, body: dict[str, Any], correlation: str) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = REPLIES
    props.CorrelationData = correlation.encode()
    publisher.wait_connected()
    # Only while the broker is up, one PUBACK at a time: a task the publisher re-sends
    # itself would be a client's re-send, not the daemon's doing.
    publisher.client.publish(TASKS, json.dumps(body), qos=1, properties=props).wait_for_publish(30)


class Soak:
    def __init__(self, plan: Plan, tmp_path: Path, model_path: Path, broker: Mosquitto) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.tmp_path = tmp_path
        self.broker = broker
        self.cfg = write_config(
            tmp_path / "dev1.toml",
            model=model_path,
            port=broker.port,
            state_dir=tmp_path / "state",
            # The argument check off: every ok set_irrigation reply is counted as dispatched.
            sections={
                "queue": {"size": 64},
                "mqtt": {"heartbeat_s": 5},
                "catalog": {"unsupported_arguments": "allow"},
            },
        )
        self.seen = Seen()
        self.sent: dict[str, dict[str, Any]] = {}  # correlation -> task
        self.daemons: list[DaemonProcess] = []
        self.kills = self.restarts = 0

    def start_daemon(self) -> DaemonProcess:
        daemon = DaemonProcess(self.cfg, self.tmp_path / f"daemon-{len(self.daemons)}.log")
        daemon.start()
        self.daemons.append(daemon)
        return daemon

    def disrupt(self, event: str) -> None:
        time.sleep(self.rng.uniform(0.0, 3.0))  # a random moment: mid-task, mid-reply, idle
        if event == "kill":
            self.daemons[-1].signal(signal.SIGKILL)
            self.daemons[-1].wait()
            self.kills += 1
            self.start_daemon()  # systemd's Restart=always
        else:
            self.broker.stop()
            time.sleep(self.rng.uniform(0.5, 2.0))  # the broker is away for a while
            self.broker.start()
            self.restarts += 1

    def wait_for_answers(self, correlations: set[str], deadline: float) -> None:
        while not correlations <= {r["_corr"] for r in self.seen.replies}:
            if time.monotonic() > deadline:
                return  # the verdict names what is missing
            time.sleep(0.2)

    def wait_for_backlog(self, at_most: int, deadline: float) -> None:
        while len(set(self.sent) - {r["_corr"] for r in self.seen.replies}) > at_most:
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def run(self) -> None:
        subscriber = Client(self.broker.port, self.seen.add)
        subscriber.client.subscribe([(REPLIES, 1), (ACTIONS, 1)])
        publisher = Client(self.broker.port)
        self.start_daemon().wait_event("mqtt connected")
        events = ["kill"] * self.plan.kills + ["broker"] * self.plan.broker_restarts
        self.rng.shuffle(events)
        batches = len(events) + 1
        try:
            for batch in range(batches):
                # Paced: at most one batch outstanding, so tasks run rather than overflow
                # the queue into BUSY (an answer too, but not the point here).
                self.wait_for_backlog(self.plan.tasks // batches, time.monotonic() + 120)
                for n in range(
                    batch * self.plan.tasks // batches, (batch + 1) * self.plan.tasks // batches
                ):
                    body = task_payload(n, self.rng)
                    publish_task(publisher, body, f"c{n}")
                    self.sent[f"c{n}"] = body
                if batch < len(events):
                    self.disrupt(events[batch])
            deadline = time.monotonic() + 60 + 3 * self.plan.tasks
            self.wait_for_answers(set(self.sent), deadline)
            # A barrier, answered after everything queued before it: late duplicates are in.
            publish_task(publisher, {"input": "Beja, 30 degrees.", "schema": SCHEMA}, "barrier")
            self.wait_for_answers({"barrier"}, deadline + 60)
        finally:
            for daemon in self.daemons:
                daemon.stop()
            subscriber.close()
            publisher.close()

    def figures(self) -> dict[str, Any]:
        replies = [r for r in self.seen.replies if r["_corr"] != "barrier"]
        per_task = Counter(r["_corr"] for r in replies)
        dispatched = {
            r["id"]
            for r in replies
            if r["status"] == "ok" and self.sent[r["_corr"]].get("action") == "set_irrigation"
        }
        actions_per_id = Counter(a["id"] for a in self.seen.actions)
        return {
            "tasks": len(self.sent),
            "with_id": sum("id" in t for t in self.sent.values()),
            "dispatch_tasks": sum(t.get("action") == "set_irrigation" for t in self.sent.values()),
            "kills": self.kills,
            "broker_restarts": self.restarts,
            "replies_per_task": dict(Counter(per_task[c] for c in self.sent)),
            "answered_dispatch_actions": len(dispatched),
            "actions_per_dispatched_task": dict(Counter(actions_per_id[i] for i in dispatched)),
            "stray_actions": sum(n for i, n in actions_per_id.items() if i not in dispatched),
            "lost": sum(1 for c in self.sent if per_task[c] == 0),
            "error_replies": dict(
                Counter(r["error"]["code"] for r in replies if r["status"] == "error")
            ),
            "flagged_not_exactly_once": sum("exactly_once" in r for r in replies),
            "resent_by_broker_to_subscriber": self.seen.resent_by_broker,
            "daemon_processes": len(self.daemons),
        }


def run_soak(plan: Plan, tmp_path: Path, model_path: Path, broker: Mosquitto) -> dict[str, Any]:
    soak = Soak(plan, tmp_path, model_path, broker)
    soak.run()
    figures = soak.figures()
    print("soak figures:", json.dumps(figures))
    tasks, dispatched = figures["tasks"], figures["answered_dispatch_actions"]
    assert (figures["kills"], figures["broker_restarts"]) == (plan.kills, plan.broker_restarts)
    assert figures["lost"] == 0, figures
    assert figures["replies_per_task"] == {1: tasks}, figures
    assert figures["actions_per_dispatched_task"] == ({1: dispatched} if dispatched else {}), (
        figures
    )
    assert figures["stray_actions"] == 0, figures
    return figures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    mosquitto = Mosquitto(workdir)  # persistence on: sessions survive its restarts
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def test_crash_soak_short(tmp_path, model_path, broker, record_property):
    figures = run_soak(Plan(tasks=30, kills=3, broker_restarts=1), tmp_path, model_path, broker)
    record_property("soak", figures)


def _selected_soak(config: pytest.Config) -> bool:
    expression = config.getoption("markexpr") or ""
    return bool(re.search(r"(?<!not )\bsoak\b", expression))


@pytest.mark.soak
def test_crash_soak_long(request, tmp_path, model_path, broker, record_property):
    if not _selected_soak(request.config):
        pytest.skip("the long soak runs only when selected: pytest -m soak")
    figures = run_soak(Plan(tasks=220, kills=12, broker_restarts=3), tmp_path, model_path, broker)
    record_property("soak", figures)
