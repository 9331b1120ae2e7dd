"""A broker that refuses a publish (mosquitto ACL: PUBACK reason 135) never counts as delivered.

Real mosquitto with an acl_file, real model, `edgeagent run` as a process. The reply
or action is refused, the daemon says so on its errors topic and in its log, the task
store records it as refused (not replied), and the task is acknowledged: sending the
same message again would only be refused again. The reply of a task whose action was
refused says `"dispatched": false`: it is sent after the broker answered the action.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.daemon import DaemonProcess, write_config
from support.mosquitto import Mosquitto, MqttProbe

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
# Anonymous clients (the daemon and the probe) may use the device's topics, may only
# read its action topics and replies/forbidden: publishing there is refused.
ACL = """
topic readwrite edgeagent/dev1/tasks
topic readwrite edgeagent/fleet/tasks
topic readwrite edgeagent/dev1/status
topic readwrite edgeagent/dev1/heartbeat
topic readwrite edgeagent/dev1/errors
topic readwrite edgeagent/dev1/results/#
topic read edgeagent/dev1/actions/#
topic readwrite replies/ok/#
topic read replies/forbidden/#
"""
ERRORS = "edgeagent/dev1/errors"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    (workdir / "acl").write_text(ACL, encoding="utf-8")
    mosquitto = Mosquitto(workdir, listener_options=f"acl_file {workdir / 'acl'}\n")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def daemon(tmp_path: Path, model_path: Path, broker: Mosquitto) -> Iterator[DaemonProcess]:
    cfg = write_config(
        tmp_path / "dev1.toml",
        model=model_path,
        port=broker.port,
        state_dir=tmp_path / "state",
        log_level="debug",
        # The argument check off: SmolLM2's zone or minutes may not be the input's, and
        # the action must go out to be refused by the broker.
        sections={"catalog": {"unsupported_arguments": "allow"}},
    )
    process = DaemonProcess(cfg, tmp_path / "dev1.log")
    process.start()
    process.wait_event("mqtt connected")
    yield process
    process.stop()


@pytest.fixture
def probe(broker: Mosquitto) -> Iterator[MqttProbe]:
    client = MqttProbe(broker.port)
    yield client
    client.close()


def request(probe: MqttProbe, payload: dict, reply_topic: str) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = payload["id"].encode()
    probe.publish("edgeagent/dev1/tasks", payload, properties=props)


def stored(tmp_path: Path, task_id: str) -> tuple[str, str | None]:
    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    try:
        row = db.execute(
            "SELECT reply_state, action_state FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
    finally:
        db.close()
    assert row is not None, task_id
    return row[0], row[1]


def test_a_refused_reply_is_reported_and_recorded_as_refused(tmp_path, daemon, probe):
    probe.subscribe(ERRORS)
    probe.subscribe("replies/#")
    request(probe, {"id": "r1", "input": "Is 20 C fine?", "schema": SCHEMA}, "replies/forbidden/a")
    (report,) = [json.loads(m.payload) for m in probe.wait_for(ERRORS)]
    assert report["id"] == "r1"
    assert report["error"]["code"] == "REPLY_REFUSED"
    assert report["error"]["details"] == {"topic": "replies/forbidden/a", "reason_code": 135}
    refused = daemon.wait_event("broker refused a publish", task_id="r1")
    assert (refused["what"], refused["reason"], refused["level"]) == (
        "reply",
        "Not authorized",
        "error",
    )
    assert not [m for m in probe.messages if m.topic == "replies/forbidden/a"]
    # Acknowledged: after a restart the broker does not deliver r1 again. The barrier
    # task is answered after anything the broker had queued for the daemon.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert stored(tmp_path, "r1") == ("refused", None)
    revived = DaemonProcess(daemon.config, tmp_path / "revived.log")
    try:
        revived.start()
        revived.wait_event("mqtt connected")
        request(probe, {"id": "r2", "input": "Is 25 C fine?", "schema": SCHEMA}, "replies/ok/b")
        probe.wait_for("replies/ok/b", timeout=120)
    finally:
        revived.stop()
    assert not [e for e in revived.events("task") if e.get("task_id") == "r1"]
    assert len(probe.wait_for(ERRORS)) == 1


def test_a_refused_action_is_reported_and_the_reply_says_it_was_not_dispatched(
    tmp_path, daemon, probe
):
    """The ACL denies the action topic: mosquitto answers the action's PUBACK with 135, and
    the reply, sent after that answer, says `dispatched: false` - also to a re-send."""
    probe.subscribe(ERRORS)
    probe.subscribe("replies/#")
    probe.subscribe("edgeagent/dev1/actions/#")
    task = {"id": "a1", "input": "Zone 3 is dry: water it 20 minutes.", "action": "set_irrigation"}
    request(probe, task, "replies/ok/a")
    (message,) = probe.wait_for("replies/ok/a", timeout=120)
    reply = json.loads(message.payload)
    assert reply["status"] == "ok", reply
    assert reply["output"]["action"] == "set_irrigation"
    assert reply["dispatched"] is False
    assert reply["dispatch_refused"] == {"topic": "edgeagent/dev1/actions/set_irrigation"}
    (report,) = [json.loads(m.payload) for m in probe.wait_for(ERRORS)]
    assert report["error"]["code"] == "REPLY_REFUSED"
    assert report["error"]["details"] == {
        "topic": "edgeagent/dev1/actions/set_irrigation",
        "reason_code": 135,
    }
    assert daemon.wait_event("broker refused a publish", task_id="a1")["what"] == "action"
    # A client's re-send: the stored reply, the same bytes, and no second dispatch attempt.
    request(probe, task, "replies/ok/a")
    first, again = probe.wait_for("replies/ok/a", count=2, timeout=30)
    assert again.payload == first.payload
    assert len(daemon.events("broker refused a publish")) == 1
    assert not [m for m in probe.messages if m.topic.startswith("edgeagent/dev1/actions/")]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert stored(tmp_path, "a1") == ("confirmed", "refused")
