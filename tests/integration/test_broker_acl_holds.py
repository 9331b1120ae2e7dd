"""Who may decide on a held action, in a real mosquitto with the ACL the role renders.

A pending hold is confirmed or rejected by publishing `<prefix>/<device>/held/<task
id>/confirm|reject` (docs/protocol.md). Only an operator (edgeagent_broker_operators)
may: the device itself (a compromised Pi would approve its own held actions), another
device and a task sender (it would approve what its own tasks asked for) get MQTT v5
PUBACK reason 135 and nothing is delivered. The device still publishes everything its
daemon publishes, reads the decisions on its holds, and answers the operator in the
operator's reply branch; the playbook refuses a client grant that covers the decision
topics and an operator named like a device. (support/acl_broker.py renders the files;
the real daemon under this ACL: test_broker_acl.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.acl_broker import CONTROLLER, DEVICES, NOT_AUTHORIZED, OBSERVER, OPERATOR, refused_play

from edgeagent.config import HomeAssistantConfig
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import DeviceInfo, discovery_configs, last_action_topic

pytestmark = pytest.mark.mqtt

BASE = "edgeagent/greenhouse-01"
DECISIONS = [
    f"{BASE}/held/t1/confirm",
    f"{BASE}/held/t1/reject",
    f"{BASE}/held/latest/confirm",  # what the Home Assistant buttons publish
    f"{BASE}/held/latest/reject",
]


def test_only_an_operator_confirms_or_rejects_a_hold(clients: Any) -> None:
    device = clients("greenhouse-01")
    other = clients("greenhouse-02")
    controller = clients(CONTROLLER)
    operator = clients(OPERATOR)
    device.subscribe(f"{BASE}/held/+/confirm", f"{BASE}/held/+/reject")
    for topic in DECISIONS:
        assert device.publish(topic, '{"by": "me"}') == NOT_AUTHORIZED, topic
        assert other.publish(topic, '{"by": "me"}') == NOT_AUTHORIZED, topic
        assert controller.publish(topic, '{"by": "me"}') == NOT_AUTHORIZED, topic
    # The operator may, and the device receives exactly the operator's messages: none
    # of the refused ones was delivered before them (mosquitto delivers in order).
    for topic in DECISIONS:
        assert operator.publish(topic, '{"by": "alice"}') == 0, topic
    got = [device.next_message()[:2] for _ in DECISIONS]
    assert got == [(topic, b'{"by": "alice"}') for topic in DECISIONS]


def test_the_device_still_publishes_everything_its_daemon_publishes(clients: Any) -> None:
    device = clients("greenhouse-01")
    observer = clients(OBSERVER)
    observer.subscribe("#")
    topics = Topics("edgeagent", "greenhouse-01", "edgeagent")
    info = DeviceInfo("greenhouse-01", "m.gguf", heartbeat_s=10, temperature_known=True)
    discovery = discovery_configs(HomeAssistantConfig(discovery=True), topics, info)
    published = [
        topics.status,
        topics.heartbeat,
        topics.errors,
        topics.result("t1"),
        topics.action("set_irrigation"),
        last_action_topic(topics),
        f"{BASE}/held/t1",  # the pending hold (retained), and its clearing
        f"replies/{OPERATOR}/greenhouse-01/cli-1",  # the answer to an operator's decision
        *discovery,  # the hold sensors and buttons included
    ]
    assert len(discovery) == 15
    for topic in published:
        assert device.publish(topic, "x") == 0, topic
    assert [observer.next_message()[0] for _ in published] == published


def test_an_operator_reads_holds_heartbeats_statuses_and_its_answers(clients: Any) -> None:
    device = clients("greenhouse-01")
    operator = clients(OPERATOR)
    operator.subscribe("edgeagent/#", f"replies/{OPERATOR}/#", "replies/controller/#")
    sent = [
        f"{BASE}/held/t1",
        f"{BASE}/heartbeat",
        f"{BASE}/status",
        "replies/controller/greenhouse-01/x",  # another sender's reply: not the operator's
        f"{BASE}/results/t1",  # task results: not needed to decide
        f"replies/{OPERATOR}/greenhouse-01/cli-1",
    ]
    for topic in sent:
        assert device.publish(topic, "x") == 0, topic
    expected = [sent[0], sent[1], sent[2], sent[5]]
    assert [operator.next_message()[0] for _ in expected] == expected


def test_an_operator_cannot_act_as_a_device_or_a_task_sender(clients: Any) -> None:
    operator = clients(OPERATOR)
    observer = clients(OBSERVER)
    observer.subscribe("#")
    for topic in (
        f"{BASE}/tasks",
        "edgeagent/fleet/tasks",
        f"{BASE}/actions/set_irrigation",
        f"{BASE}/held/t1",  # a forged pending hold
        f"{BASE}/status",
        f"{BASE}/held/t1/confirm/x",
    ):
        assert operator.publish(topic, "forged") == NOT_AUTHORIZED, topic
    assert operator.publish(f"{BASE}/held/t1/confirm", "{}") == 0
    assert observer.next_message()[0] == f"{BASE}/held/t1/confirm"


def _pis(tmp_path: Path) -> list[str]:
    pis = ["[pis]"] + [f"{d} edgeagent_device_id={d}" for d in DEVICES]
    return [*pis, "", "[pis:vars]", f"edgeagent_mqtt_password_dir={tmp_path / 'credentials'}"]


def test_a_client_that_could_confirm_holds_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    bridge = {"name": "bridge", "password": "pw-bridge", "readwrite": ["edgeagent/#"]}
    extra = {"edgeagent_broker_clients": [bridge]}
    run = refused_play(acl_broker, ansible_bin, tmp_path, _pis(tmp_path), extra)
    assert "write grant 'edgeagent/#' covers edgeagent/+/held/+/confirm" in run.stdout, run.stdout[
        -3000:
    ]


def test_an_operator_named_like_a_device_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    extra = {"edgeagent_broker_operators": [{"name": "greenhouse-02", "password": "pw"}]}
    run = refused_play(acl_broker, ansible_bin, tmp_path, _pis(tmp_path), extra)
    # One user name for a device and an operator: the operator would get its topics.
    users = "Users: greenhouse-01, greenhouse-02, controller, observer, greenhouse-02;"
    assert users in run.stdout, run.stdout[-3000:]


def test_an_operator_without_a_password_is_refused(
    acl_broker: Any, ansible_bin: Path, tmp_path: Path
) -> None:
    extra = {"edgeagent_broker_operators": [{"name": "bob"}]}
    run = refused_play(acl_broker, ansible_bin, tmp_path, _pis(tmp_path), extra)
    assert "Every entry of edgeagent_broker_operators needs a name and a password" in run.stdout
