"""Exactly once across broker restarts and daemon restarts: real mosquitto, real model.

* A dispatch action finished while the broker was away is published after the
  daemon's restart, once, together with its reply from the store.
* Tasks sent without an id keep their identity across a broker restart: each is run
  and answered once (item 2).
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.daemon import DaemonProcess, write_config
from support.mosquitto import Mosquitto, MqttProbe

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
# Long enough to still be generating when the broker goes away.
SLOW_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 600, "maxLength": 700}},
    "required": ["story"],
}
TASKS = "edgeagent/dev1/tasks"


@pytest.fixture
def probe(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    client = MqttProbe(mosquitto.port)
    yield client
    client.close()


@pytest.fixture
def start_daemon(tmp_path: Path, model_path: Path, mosquitto: Mosquitto):
    cfg = write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=mosquitto.port,
        state_dir=tmp_path / "state",
        log_level="debug",
        # The argument check off: the action must go out; SmolLM2's minutes may not be
        # the input's, which the gate would hold.
        sections={"catalog": {"unsupported_arguments": "allow"}},
    )
    started: list[DaemonProcess] = []

    def start(name: str) -> DaemonProcess:
        daemon = DaemonProcess(cfg, tmp_path / f"{name}.log")
        daemon.start()
        started.append(daemon)
        daemon.wait_event("mqtt connected")
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def request(probe: MqttProbe, payload: dict, reply_topic: str, correlation: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = correlation
    probe.publish(TASKS, payload, properties=props)


def barrier(probe: MqttProbe, name: str) -> None:
    """A task answered after everything the broker had queued for the daemon before it:
    a duplicate of an earlier reply would have arrived by now (one publisher's order)."""
    probe.subscribe(f"replies/{name}")
    request(
        probe, {"id": name, "input": "Is 20 C fine?", "schema": SCHEMA}, f"replies/{name}", b"b"
    )
    probe.wait_for(f"replies/{name}", timeout=120)


def test_an_action_finished_while_the_broker_was_away_is_dispatched_after_a_restart(
    mosquitto, probe, start_daemon
):
    probe.subscribe("replies/r")
    probe.subscribe("edgeagent/dev1/actions/#")
    first = start_daemon("first")
    request(
        probe,
        {"id": "slow", "input": "Tell a story.", "schema": SLOW_SCHEMA, "max_tokens": 400},
        "replies/r",
        b"slow",
    )
    irrigation = {
        "id": "irr",
        "input": "Zone 3 is dry: water it 20 minutes.",
        "action": "set_irrigation",
    }
    request(probe, irrigation, "replies/r", b"irr")
    first.wait_event("task started", task_id="slow")
    mosquitto.stop()
    first.wait_event("mqtt disconnected")
    first.wait_event("task", timeout=120, task_id="irr")  # answered, but nowhere to send it
    first.signal(signal.SIGTERM)  # systemctl restart
    assert first.wait() == 0
    assert not [m for m in probe.messages if m.topic.startswith("edgeagent/dev1/actions/")]
    mosquitto.start()
    revived = start_daemon("revived")
    replies = probe.wait_for("replies/r", count=2, timeout=120)
    (action,) = [
        json.loads(m.payload) for m in probe.wait_for("edgeagent/dev1/actions/#", timeout=60)
    ]
    barrier(probe, "after-restart")
    answers = {m.properties.CorrelationData: json.loads(m.payload) for m in replies}
    assert len([m for m in probe.messages if m.topic == "replies/r"]) == 2
    assert answers[b"irr"]["status"] == "ok"
    assert action == {"id": "irr", "device": "dev1", **answers[b"irr"]["output"]}
    assert len([m for m in probe.messages if m.topic.startswith("edgeagent/dev1/actions/")]) == 1
    # From the store: the revived daemon did not run it again.
    assert not [e for e in revived.events("task") if e.get("task_id") == "irr"]
    assert [e for e in revived.events("task answered from journal") if e["task_id"] == "irr"]


def test_tasks_without_an_id_are_answered_once_across_a_broker_restart(
    mosquitto, probe, start_daemon
):
    probe.subscribe("replies/idless")
    daemon = start_daemon("dev1")
    request(
        probe,
        {"input": "Tell a story.", "schema": SLOW_SCHEMA, "max_tokens": 400},
        "replies/idless",
        b"n0",
    )
    for n in (1, 2):
        request(
            probe,
            {"input": f"Sensor {n}: 2{n} C.", "schema": SCHEMA},
            "replies/idless",
            f"n{n}".encode(),
        )
    daemon.wait_event("task started")
    mosquitto.stop()
    daemon.wait_event("mqtt disconnected")
    mosquitto.start()  # redelivers the unacknowledged tasks to the daemon
    probe.wait_for("replies/idless", count=3, timeout=180)
    barrier(probe, "after-broker-restart")
    replies = [m for m in probe.messages if m.topic == "replies/idless"]
    per_correlation = Counter(m.properties.CorrelationData for m in replies)
    assert per_correlation == {b"n0": 1, b"n1": 1, b"n2": 1}
    ids = {json.loads(m.payload)["id"] for m in replies}
    assert len(ids) == 3
    runs = Counter(e["task_id"] for e in daemon.events("task") if e["task_id"] in ids)
    assert runs == dict.fromkeys(ids, 1)  # the model ran once per task
