"""Held actions an operator resolves over MQTT: real mosquitto, the real daemon, SmolLM2.

Every set_irrigation answer is held (`[catalog] min_confidence = 0.999`, and an input the
model would not water for), so each task below opens a hold. The operator is a plain
`mosquitto_pub` where nothing but the topic and payload matter, and a v5 client where the
answer on a response topic does.

The exactly-once case cuts the daemon's connection in one direction (support/tcp_proxy.py:
what it sends is lost, what the broker sends arrives), so the confirmed action is
published and never PUBACKed; the daemon is then killed (SIGKILL), the broker restarted,
and the restarted daemon must dispatch the action exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.daemon import DaemonProcess, write_config
from support.mosquitto import Mosquitto, MqttProbe, property_of
from support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

BASE = "edgeagent/dev1"
ACTIONS = f"{BASE}/actions/#"
HOLDING = {"catalog": {"min_confidence": 0.999}}


def held_task(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "input": "The weather is nice today.", "action": "set_irrigation"}


def v5(topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.CorrelationData = correlation
    return props


def mosquitto_pub(port: int, topic: str, payload: str) -> None:
    """The operator's whole tool: no response topic, no client library."""
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ],
        check=True,
        timeout=30,
    )


def retained(port: int, topic: str) -> list[str]:
    """What a new subscriber gets at once: the retained message, if there is one."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-W", "2", "-C", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [line for line in out.stdout.splitlines() if line]


def cleared(probe: MqttProbe, port: int, task_id: str, timeout: float = 30) -> None:
    """The notice on held/<task_id> was cleared (a zero-length retained message) and a new
    subscriber gets none."""
    topic = f"{BASE}/held/{task_id}"
    end = time.monotonic() + timeout
    while not [m for m in probe.messages if m.topic == topic and not m.payload]:
        if time.monotonic() > end:
            pytest.fail(f"{topic} not cleared within {timeout} s")
        time.sleep(0.05)
    assert retained(port, topic) == []


def bodies(probe: MqttProbe, topic: str) -> list[Any]:
    return [json.loads(m.payload) for m in probe.messages if m.topic == topic and m.payload]


class Requester:
    """Sends tasks with an MQTT v5 response topic; the follow-ups come to the same one."""

    def __init__(self, probe: MqttProbe, name: str = "req") -> None:
        self.probe = probe
        self.topic = f"replies/{name}"
        probe.subscribe(self.topic)

    def send(self, task: dict[str, Any]) -> None:
        self.probe.publish(f"{BASE}/tasks", task, properties=v5(self.topic, task["id"].encode()))

    def replies(self, task_id: str, count: int = 1, timeout: float = 180) -> list[Any]:
        """The replies to `task_id` (its first, then its follow-up), in order."""

        def mine() -> list[Any]:
            return [
                json.loads(m.payload)
                for m in self.probe.messages
                if m.topic == self.topic and property_of(m, "CorrelationData") == task_id.encode()
            ]

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(found := mine()) >= count:
                return found
            time.sleep(0.05)
        pytest.fail(f"{count} replies for {task_id} not seen within {timeout} s; saw {mine()}")


@pytest.fixture
def probe(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    client = MqttProbe(mosquitto.port)
    client.subscribe(f"{BASE}/held/#")
    client.subscribe(ACTIONS)
    client.subscribe("replies/ops")
    yield client
    client.close()


def start(tmp_path: Path, model_path: Path, port: int, name: str, **catalog: Any) -> DaemonProcess:
    cfg = write_config(
        tmp_path / f"{name}.toml",
        model=model_path,
        port=port,
        state_dir=tmp_path / "state",
        log_level="debug",
        sections={"catalog": HOLDING["catalog"] | catalog},
    )
    daemon = DaemonProcess(cfg, tmp_path / f"{name}.log")
    daemon.start()
    daemon.wait_event("mqtt connected")
    return daemon


@pytest.fixture
def daemon(tmp_path: Path, model_path: Path, mosquitto: Mosquitto) -> Iterator[DaemonProcess]:
    running = start(tmp_path, model_path, mosquitto.port, "dev1")
    yield running
    running.stop()


def test_confirm_reject_edit_and_a_late_confirm(daemon, mosquitto, probe):
    requester = Requester(probe)
    for task_id in ("h1", "h2", "h3"):
        requester.send(held_task(task_id))
    first = {t: requester.replies(t)[0] for t in ("h1", "h2", "h3")}
    assert all(r["dispatched"] is False and "held" in r for r in first.values())
    probe.wait_for(f"{BASE}/held/+", count=3, timeout=30)
    # Retained: a subscriber that comes later still sees what waits for it.
    (notice,) = [json.loads(line) for line in retained(mosquitto.port, f"{BASE}/held/h1")]
    assert notice["task_id"] == "h1"
    assert notice["action"] == "set_irrigation"
    assert notice["args"] == first["h1"]["output"]["args"]
    assert notice["input"] == "The weather is nice today."
    assert notice["expires_at"].endswith("Z")

    # Confirm with nothing but mosquitto_pub: the action goes out once.
    mosquitto_pub(mosquitto.port, f"{BASE}/held/h1/confirm", '{"by": "alice"}')
    follow_up = requester.replies("h1", 2)[1]
    assert follow_up["dispatched"] is True
    assert follow_up["resolution"]["decision"] == "confirmed"
    assert follow_up["resolution"]["by"] == "alice"
    (action,) = bodies(probe, f"{BASE}/actions/set_irrigation")
    assert action == {"id": "h1", "device": "dev1", **first["h1"]["output"]}

    # Reject: nothing dispatched, the requester told.
    mosquitto_pub(mosquitto.port, f"{BASE}/held/h2/reject", '{"by": "bob", "note": "no"}')
    follow_up = requester.replies("h2", 2)[1]
    assert follow_up["dispatched"] is False
    assert follow_up["resolution"]["decision"] == "rejected"

    # Edit: the operator's arguments are what goes out.
    edited = {"zone": 2, "minutes": 7}
    mosquitto_pub(
        mosquitto.port, f"{BASE}/held/h3/confirm", json.dumps({"by": "carol", "args": edited})
    )
    follow_up = requester.replies("h3", 2)[1]
    assert follow_up["resolution"] == {
        **follow_up["resolution"],
        "decision": "edited",
        "args": edited,
    }
    assert follow_up["output"]["args"] == edited

    # Too late: the v5 operator hears who was first.
    probe.publish(f"{BASE}/held/h2/confirm", {"by": "dave"}, properties=v5("replies/ops", b"late"))
    probe.wait_for("replies/ops", timeout=30)
    (late,) = bodies(probe, "replies/ops")
    assert late["error"]["code"] == "HOLD_RESOLVED"
    assert late["error"]["details"]["by"] == "bob"

    actions = bodies(probe, f"{BASE}/actions/set_irrigation")
    assert [(a["id"], a["args"]) for a in actions] == [
        ("h1", first["h1"]["output"]["args"]),
        ("h3", edited),
    ]
    for task_id in ("h1", "h2", "h3"):  # every notice cleared
        cleared(probe, mosquitto.port, task_id)
    resolved = {e["task_id"]: e for e in daemon.events("hold resolved")}
    assert resolved["h3"]["edits"] == sorted(
        k for k in edited if edited[k] != first["h3"]["output"]["args"].get(k)
    )
    assert resolved["h2"]["decision"] == "rejected"


def test_a_hold_expires_after_its_ttl(tmp_path, model_path, mosquitto, probe):
    daemon = start(tmp_path, model_path, mosquitto.port, "short", hold_ttl_s=3)
    try:
        requester = Requester(probe)
        requester.send(held_task("e1"))
        requester.replies("e1")
        follow_up = requester.replies("e1", 2, timeout=60)[1]
        assert follow_up["resolution"]["decision"] == "expired"
        assert follow_up["resolution"]["by"] is None
        cleared(probe, mosquitto.port, "e1")
        probe.publish(f"{BASE}/held/e1/confirm", {"by": "eve"}, properties=v5("replies/ops", b"e"))
        probe.wait_for("replies/ops", timeout=30)
        assert bodies(probe, "replies/ops")[0]["error"]["code"] == "HOLD_EXPIRED"
        assert bodies(probe, f"{BASE}/actions/set_irrigation") == []
    finally:
        daemon.stop()


def test_a_confirm_cut_off_by_sigkill_before_the_puback_dispatches_once(
    tmp_path, model_path, mosquitto, probe
):
    proxy = TcpProxy(mosquitto.port)
    try:
        first = start(tmp_path, model_path, proxy.port, "first")
        requester = Requester(probe)
        requester.send(held_task("x1"))
        (reply,) = requester.replies("x1")
        probe.wait_for(f"{BASE}/held/x1", timeout=30)
        proxy.lose_upstream()  # what the daemon sends from now on never arrives
        probe.publish(
            f"{BASE}/held/x1/confirm", {"by": "alice"}, properties=v5("replies/ops", b"x")
        )
        first.wait_event("hold resolved", timeout=60, task_id="x1")  # committed, then published
        first.signal(signal.SIGKILL)
        first.wait()
        assert bodies(probe, f"{BASE}/actions/set_irrigation") == []
        mosquitto.stop()
        mosquitto.start()  # the confirm, never acknowledged, waits in the daemon's session
        proxy.restore()
        second = start(tmp_path, model_path, proxy.port, "second")
        try:
            probe.wait_for(f"{BASE}/actions/set_irrigation", timeout=60)
            probe.wait_for("replies/ops", timeout=60)
            answer = bodies(probe, "replies/ops")[0]
            assert answer == {
                "ok": True,
                "task_id": "x1",
                "decision": "confirmed",
                "dispatched": True,
            }
            follow_up = requester.replies("x1", 2, timeout=60)[1]
            assert follow_up["dispatched"] is True
            # A task answered after all that: anything repeated would have arrived by now.
            requester.send({"id": "barrier", "input": "Say ok.", "schema": {"type": "boolean"}})
            requester.replies("barrier")
            actions = bodies(probe, f"{BASE}/actions/set_irrigation")
            assert actions == [{"id": "x1", "device": "dev1", **reply["output"]}]
            cleared(probe, mosquitto.port, "x1")
            assert second.events("hold resolution resumed")
            assert not second.events("hold resolved")  # decided once, by the first process
        finally:
            second.stop()
    finally:
        proxy.close()
