"""The ACL the broker play renders for devices and operators, evaluated as mosquitto does
(a publish needs a `write`/`readwrite` line whose pattern matches the topic, a delivery a
`read`/`readwrite` one): a device writes exactly what its daemon publishes and can never
publish a hold's confirm or reject; an operator can, for every device, and nothing a
device publishes. tests/integration/test_broker_acl.py runs the same files in mosquitto."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from edgeagent.protocol.reply import route
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import last_action_topic

DEVICE = {
    "host": "pi-1",
    "device": "greenhouse-01",
    "user": "greenhouse-01",
    "prefix": "edgeagent",
    "fleet": True,
    "reply_prefixes": ["replies"],
}
OTHER = {**DEVICE, "host": "pi-2", "device": "greenhouse-02", "user": "greenhouse-02"}
TOPICS = Topics("edgeagent", "greenhouse-01", "edgeagent")


def allowed(lines: list[str], access: str, topic: str) -> bool:
    for line in lines:
        word, grant, pattern = line.split(" ", 2)
        assert word == "topic"
        if grant in (access, "readwrite") and mqtt.topic_matches_sub(pattern, topic):
            return True
    return False


def test_a_device_writes_what_its_daemon_publishes(rules):
    acl = rules.edgeagent_device_acl(DEVICE)
    published = [
        TOPICS.status,
        TOPICS.heartbeat,
        TOPICS.errors,
        TOPICS.result("t-1"),
        TOPICS.action("set_irrigation"),
        last_action_topic(TOPICS),
        f"{TOPICS.base}/held/t-1",  # a pending hold, retained
        "replies/controller/greenhouse-01/cli-1",  # a reply naming the device
        "replies/greenhouse-01/cli-1",  # its own CLI's branch
    ]
    for topic in published:
        assert allowed(acl, "write", topic), topic
    # It reads its tasks, its retained status and heartbeat (the health gate), its holds'
    # decisions, and the replies to its own CLI.
    for topic in (
        TOPICS.tasks,
        TOPICS.fleet_tasks,
        TOPICS.status,
        TOPICS.heartbeat,
        f"{TOPICS.base}/held/t-1/confirm",
        f"{TOPICS.base}/held/latest/reject",
        "replies/greenhouse-01/cli-1",
    ):
        assert allowed(acl, "read", topic), topic


@pytest.mark.parametrize(
    "topic",
    [
        "edgeagent/greenhouse-01/held/t-1/confirm",  # its own hold: only an operator decides
        "edgeagent/greenhouse-01/held/t-1/reject",
        "edgeagent/greenhouse-01/held/latest/confirm",
        "edgeagent/greenhouse-02/held/t-1/confirm",
        "edgeagent/greenhouse-01/tasks",  # not even its own tasks
        "edgeagent/greenhouse-01/made-up",  # nothing below its base but what it publishes
        "edgeagent/greenhouse-01/held/t-1/confirm/x",
        "edgeagent/greenhouse-02/status",
        "edgeagent/fleet/tasks",
        "replies/controller/greenhouse-02/x",
    ],
)
def test_a_device_cannot_write(rules, topic):
    assert not allowed(rules.edgeagent_device_acl(DEVICE), "write", topic)


def test_a_device_reads_no_other_devices_holds(rules):
    acl = rules.edgeagent_device_acl(DEVICE)
    assert not allowed(acl, "read", "edgeagent/greenhouse-02/held/t-1/confirm")
    assert not allowed(acl, "read", "edgeagent/greenhouse-02/held/t-1")


def test_the_device_writes_every_reply_route_without_an_address(rules):
    acl = rules.edgeagent_device_acl(DEVICE)
    for task_id in ("t-9", None):  # results/<id>, or errors when the id is unreadable
        where = route(TOPICS, task_id, response_topic=None, correlation_data=None, reply_to=None)
        assert allowed(acl, "write", where.topic)


def test_an_operator_decides_on_every_devices_holds(rules):
    acl = rules.edgeagent_operator_acl({"name": "alice"}, [DEVICE, OTHER])
    for device in ("greenhouse-01", "greenhouse-02"):
        for topic in ("held/t-1/confirm", "held/t-1/reject", "held/latest/confirm"):
            assert allowed(acl, "write", f"edgeagent/{device}/{topic}")
        for topic in ("held/t-1", "heartbeat", "status", "held/t-1/confirm"):
            assert allowed(acl, "read", f"edgeagent/{device}/{topic}")
    assert allowed(acl, "read", "replies/alice/greenhouse-01/cli-1")  # the device's answer
    assert allowed(acl, "write", "edgeagent/clients/abc/sync")  # the CLI's sync marker
    for topic in (
        "edgeagent/greenhouse-01/tasks",
        "edgeagent/fleet/tasks",
        "edgeagent/greenhouse-01/status",
        "edgeagent/greenhouse-01/held/t-1",  # a forged pending hold
        "edgeagent/greenhouse-01/actions/set_irrigation",  # a forged action
        "replies/bob/greenhouse-01/x",
    ):
        assert not allowed(acl, "write", topic), topic
    assert not allowed(acl, "read", "replies/bob/greenhouse-01/x")
    assert not allowed(acl, "read", "edgeagent/greenhouse-01/tasks")


def test_an_operators_extra_grants_are_added(rules):
    operator = {"name": "homeassistant", "write": ["edgeagent/+/tasks"], "read": ["x/#"]}
    acl = rules.edgeagent_operator_acl(operator, [DEVICE])
    assert allowed(acl, "write", "edgeagent/greenhouse-01/tasks")
    assert allowed(acl, "read", "x/y")


def test_every_prefix_and_reply_prefix_of_the_fleet(rules):
    site = {**OTHER, "prefix": "site2", "reply_prefixes": ["answers", "replies"]}
    acl = rules.edgeagent_operator_acl({"name": "alice"}, [DEVICE, site])
    assert allowed(acl, "write", "site2/greenhouse-02/held/t/confirm")
    assert allowed(acl, "write", "edgeagent/greenhouse-01/held/t/confirm")
    assert allowed(acl, "read", "answers/alice/greenhouse-02/x")


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("#", "edgeagent/+/held/+/confirm", True),
        ("edgeagent/#", "edgeagent/+/held/+/confirm", True),
        ("edgeagent/+/held/#", "edgeagent/+/held/+/confirm", True),
        ("edgeagent/gh-01/held/t/confirm", "edgeagent/+/held/+/confirm", True),
        ("edgeagent/+/+/+/+", "edgeagent/+/held/+/confirm", True),
        ("edgeagent/+/tasks", "edgeagent/+/held/+/confirm", False),
        ("edgeagent/+/held/+", "edgeagent/+/held/+/confirm", False),
        ("edgeagent/+/held/+/confirm/x", "edgeagent/+/held/+/confirm", False),
        ("other/#", "edgeagent/+/held/+/confirm", False),
        ("a/#", "a", True),  # '#' matches the level above it too
    ],
)
def test_filters_overlap(rules, first, second, overlap):
    assert rules.filters_overlap(first, second) is overlap
    assert rules.filters_overlap(second, first) is overlap


def test_a_client_that_could_confirm_holds_is_refused(rules):
    clients = [
        {"name": "controller", "write": ["edgeagent/+/tasks", "edgeagent/fleet/tasks"]},
        {"name": "bridge", "readwrite": ["edgeagent/#"]},
        {"name": "sloppy", "write": ["#"]},
        {"name": "watcher", "read": ["#"]},  # reading is fine
    ]
    problems = rules.edgeagent_broker_problems([DEVICE], clients)
    why = " (confirming or rejecting held actions is for edgeagent_broker_operators)"
    assert problems == [
        "client bridge: write grant 'edgeagent/#' covers edgeagent/+/held/+/confirm" + why,
        "client sloppy: write grant '#' covers edgeagent/+/held/+/confirm" + why,
    ]
