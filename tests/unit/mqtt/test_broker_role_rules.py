"""The rules the broker play renders (ansible/roles/edgeagent/filter_plugins/mosquitto.py).

The filter plugin runs inside Ansible on the controller and cannot import edgeagent, so
it restates a few facts of the daemon: the discovery topics a device publishes, its MQTT
v5 Maximum Packet Size, the [mqtt] defaults and the fleet's own topic levels. These
tests hold the two in step.
"""

from __future__ import annotations

import pytest

from edgeagent.config import HomeAssistantConfig, MqttConfig
from edgeagent.mqtt.limits import PACKET_HEADROOM_BYTES, maximum_packet_size
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import DeviceInfo, discovery_configs


@pytest.mark.parametrize("device", ["greenhouse-01", "pi.lan", "Gewächshaus"])
def test_the_acl_grants_exactly_the_discovery_topics_the_daemon_publishes(rules, device):
    topics = Topics("edgeagent", device, "edgeagent")
    info = DeviceInfo(device, "m.gguf", heartbeat_s=10, temperature_known=True)
    published = discovery_configs(HomeAssistantConfig(discovery=True), topics, info)
    assert rules.mosquitto_discovery_topics("homeassistant", device) == list(published)


@pytest.mark.parametrize(
    ("overrides", "shared_group"),
    [({}, "edgeagent"), ({"max_payload_bytes": 4096, "reply_topic_max_bytes": 512}, ""), ({}, "")],
)
def test_the_broker_limit_is_the_devices_maximum_packet_size(rules, overrides, shared_group):
    cfg = MqttConfig(shared_group=shared_group or None, **overrides)
    topics = Topics(cfg.topic_prefix, "greenhouse-01", cfg.shared_group)
    device = {
        "device": "greenhouse-01",
        "prefix": cfg.topic_prefix,
        "fleet": bool(shared_group),
        "shared_group": shared_group,
        "mqtt_overrides": overrides,
    }
    expected = maximum_packet_size(cfg, topics.subscriptions())
    assert rules.edgeagent_maximum_packet_size(device) == expected


def test_the_role_knows_the_daemons_defaults(rules):
    defaults = MqttConfig()
    assert defaults.max_payload_bytes == rules.DEFAULT_MAX_PAYLOAD_BYTES
    assert defaults.reply_topic_max_bytes == rules.DEFAULT_REPLY_TOPIC_MAX_BYTES
    assert PACKET_HEADROOM_BYTES == rules.PACKET_HEADROOM_BYTES


def test_the_fleets_own_topic_levels_are_reserved(rules):
    topics = Topics("edgeagent", "x", "edgeagent")
    assert topics.fleet_tasks.split("/")[1] in rules.RESERVED_DEVICE_IDS
    # The fleet view's sync marker and the CLI's private topics live under <prefix>/clients/.
    assert "clients" in rules.RESERVED_DEVICE_IDS
    for reserved in rules.RESERVED_DEVICE_IDS:
        assert "is reserved" in rules.edgeagent_device_id_problem(reserved)


@pytest.mark.parametrize("device", ["a b", "a\tb", "a/b", "a+", "#", "a\nuser x", "$SYS", ""])
def test_unsafe_device_ids_are_refused(rules, device):
    assert rules.edgeagent_device_id_problem(device) != ""


@pytest.mark.parametrize("device", ["greenhouse-01", "pi.lan", "fleet-01", "client", 7])
def test_ordinary_device_ids_pass(rules, device):
    assert rules.edgeagent_device_id_problem(device) == ""


def test_names_shared_by_two_entries_are_reported(rules):
    devices = [
        {"host": "a", "device": "gh-01", "user": "gh-01", "prefix": "edgeagent"},
        {"host": "b", "device": "gh-02", "user": "gh-01", "prefix": "edgeagent"},  # one user
        {"host": "c", "device": "homeassistant", "user": "homeassistant", "prefix": "edgeagent"},
        {"host": "d", "device": "fleet", "user": "fleet", "prefix": "edgeagent"},
    ]
    clients = [{"name": "homeassistant"}]  # a device named like a task sender
    operators = [{"name": "gh-02"}, {"name": "alice"}, {"name": "alice"}]
    problems = rules.edgeagent_broker_problems(devices, clients, operators)
    assert problems == [
        (
            "device id 'fleet' is reserved: <prefix>/fleet/ is the fleet's own topic branch,"
            " not a device's (reserved: fleet, clients)"
        ),
        "'gh-01' names both host a and host b",
        "'homeassistant' names both host c and client homeassistant",
        "'gh-02' names both host b and operator gh-02",  # an operator named like a device
        "'alice' names both operator alice and operator alice",
    ]
    ok = [{"host": "a", "device": "gh-01", "user": "gh-01", "prefix": "edgeagent"}]
    assert rules.edgeagent_broker_problems(ok, [{"name": "controller"}]) == []
    assert rules.edgeagent_broker_problems(ok, [], [{"name": "alice"}]) == []
