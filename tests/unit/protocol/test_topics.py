"""The held-action topics: what the daemon subscribes to and what it takes as a command."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from edgeagent.protocol.topics import Topics

TOPICS = Topics("edgeagent", "dev1", "edgeagent")


def test_the_hold_commands_are_subscribed_beside_the_tasks():
    assert TOPICS.hold_commands == ["edgeagent/dev1/held/+/confirm", "edgeagent/dev1/held/+/reject"]
    assert TOPICS.held("t1") == "edgeagent/dev1/held/t1"
    # The notice itself never matches a command subscription: the device does not hear it.
    assert not any(mqtt.topic_matches_sub(s, TOPICS.held("t1")) for s in TOPICS.hold_commands)
    assert TOPICS.subscriptions() == [
        "edgeagent/dev1/tasks",
        "$share/edgeagent/edgeagent/fleet/tasks",
    ]


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("edgeagent/dev1/held/t1/confirm", ("t1", "confirm")),
        ("edgeagent/dev1/held/latest/reject", ("latest", "reject")),
        ("edgeagent/dev1/held/t1/approve", None),
        ("edgeagent/dev1/held/t1", None),
        ("edgeagent/dev1/held/a/b/confirm", None),
        ("edgeagent/dev2/held/t1/confirm", None),
        ("edgeagent/dev1/tasks", None),
    ],
)
def test_a_command_topic_names_a_hold_and_a_verb(topic, parsed):
    assert TOPICS.hold_command(topic) == parsed
