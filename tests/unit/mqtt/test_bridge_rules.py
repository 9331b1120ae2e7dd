"""The topic lines of a site's bridge and the central ACL of its user
(ansible/roles/edgeagent/filter_plugins/bridge.py), held to the daemon's own topics."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import paho.mqtt.client as mqtt
import pytest

from edgeagent.config import HomeAssistantConfig
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import DeviceInfo, discovery_configs

PLUGIN = Path(__file__).parents[3] / "ansible" / "roles" / "edgeagent" / "filter_plugins"
BRIDGE = {"site": "site-a", "address": "central.lan", "homeassistant_prefix": "homeassistant"}
DEVICES = [{"device": "gh-01", "prefix": "edgeagent/site-a", "reply_prefixes": ["replies"]}]


@pytest.fixture(scope="module")
def rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bridge_filters", PLUGIN / "bridge.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crossing(lines: list[dict], topic: str, direction: str) -> str | None:
    """Where `topic` lands on the other side of the bridge (None: it does not cross).
    `topic` is a local topic for "out", a central one for "in", as mosquitto maps them."""
    for line in lines:
        if line["direction"] != direction:
            continue
        here, there = (
            (line["local"], line["remote"])
            if direction == "out"
            else (line["remote"], line["local"])
        )
        if topic.startswith(here) and mqtt.topic_matches_sub(line["pattern"], topic[len(here) :]):
            return there + topic[len(here) :]
    return None


def test_a_site_devices_topics_go_up_unchanged_and_its_tasks_come_down(rules):
    lines = rules.edgeagent_bridge_topics(BRIDGE, DEVICES)
    topics = Topics("edgeagent/site-a", "gh-01", "edgeagent")
    for up in (topics.status, topics.heartbeat, topics.errors, topics.result("t1"),
               topics.action("notify"), f"{topics.base}/last_action", "replies/ha/gh-01/x"):  # fmt: skip
        assert crossing(lines, up, "out") == up
    assert crossing(lines, topics.held("t1"), "out") == topics.held("t1")
    for subscribed in topics.hold_commands:  # what the daemon listens to for decisions
        command = subscribed.replace("/+/", "/t1/")
        assert crossing(lines, command, "in") == command
        assert crossing(lines, command, "out") is None  # only operators decide, centrally
    assert crossing(lines, topics.tasks, "in") == topics.tasks
    assert crossing(lines, topics.fleet_tasks, "in") == topics.fleet_tasks  # the site's own
    # The fleet-wide task topic arrives as the site's fleet task topic.
    assert crossing(lines, Topics("edgeagent", "x", None).fleet_tasks, "in") == topics.fleet_tasks
    # Nothing else crosses: tasks do not go up, device topics do not come down, another
    # site's topics and replies naming another device stay where they are.
    assert crossing(lines, topics.tasks, "out") is None
    assert crossing(lines, topics.status, "in") is None
    assert crossing(lines, topics.action("notify"), "in") is None
    assert crossing(lines, "edgeagent/site-b/gh-02/tasks", "in") is None
    assert crossing(lines, "replies/ha/gh-02/x", "out") is None
    assert crossing(lines, "edgeagent/site-a/clients/x/sync", "out") is None


def test_discovery_configs_cross_exactly(rules):
    lines = rules.edgeagent_bridge_topics(BRIDGE, DEVICES)
    topics = Topics("edgeagent/site-a", "gh-01", "edgeagent")
    info = DeviceInfo("gh-01", "m.gguf", heartbeat_s=10, temperature_known=True)
    published = discovery_configs(HomeAssistantConfig(discovery=True), topics, info)
    for topic in published:
        assert crossing(lines, topic, "out") == topic
    assert crossing(lines, "homeassistant/switch/edgeagent_gh-01/x/config", "out") is None


def test_heartbeats_cross_at_qos_0_and_everything_else_at_qos_1(rules):
    lines = rules.edgeagent_bridge_topics(BRIDGE, DEVICES)
    assert [x["pattern"] for x in lines if x["qos"] == 0] == ["+/heartbeat"]


def test_the_central_user_is_granted_what_the_bridge_carries(rules):
    sites = [{"site": "site-a", "password": "pw", "devices": ["gh-01"]}]
    (client,) = rules.edgeagent_bridge_clients(sites, homeassistant_prefix="homeassistant")
    lines = rules.edgeagent_bridge_topics(BRIDGE, DEVICES)
    assert client["name"] == "bridge-site-a"
    assert client["read"] == [
        "edgeagent/site-a/+/held/+/confirm",
        "edgeagent/site-a/+/held/+/reject",
        "edgeagent/site-a/+/tasks",
        "edgeagent/fleet/tasks",
    ]
    assert sorted(client["write"]) == sorted(
        [x["remote"] + x["pattern"] for x in lines if x["direction"] == "out"]
        + ["edgeagent/site-a/fleet/bridge"]
    )


def test_a_device_id_in_two_sites_and_a_reserved_site_are_refused(rules):
    sites = [
        {"site": "site-a", "password": "a", "devices": ["gh-01"]},
        {"site": "site-b", "password": "b", "devices": ["gh-01"]},
        {"site": "fleet", "password": "c", "devices": []},
        {"site": "site-a", "password": "d", "devices": []},
    ]
    with pytest.raises(ValueError, match="sites cannot be bridged") as refused:
        rules.edgeagent_bridge_clients(sites)
    message = str(refused.value)
    assert "device id 'gh-01' is in site site-a and site site-b" in message
    assert "site 'fleet' must be one topic level" in message
    assert "site 'site-a' is listed twice" in message


@pytest.mark.parametrize(
    ("bridge", "devices", "problem"),
    [
        ({"site": "a/b", "address": "c"}, [], "must be one topic level"),
        ({"site": "clients", "address": "c"}, [], "must be one topic level"),
        ({"site": "s"}, [], "address (the central broker) is required"),
        ({"site": "s", "address": "c", "certfile": "x"}, [], "certfile and keyfile go together"),
        ({"site": "s", "address": "c", "adress": "typo"}, [], "unknown setting 'adress'"),
        ({"site": "s", "address": "c", "password": "a b"}, [], "password must not contain"),
        (
            {"site": "s", "address": "c"},
            [{"device": "d", "host": "h", "prefix": "edgeagent"}],
            "the devices of site 's' need 'edgeagent/s'",
        ),
    ],
)
def test_bridge_problems(rules, bridge, devices, problem):
    assert any(problem in p for p in rules.edgeagent_bridge_problems(bridge, devices))


def test_a_good_bridge_has_no_problems(rules):
    assert rules.edgeagent_bridge_problems(BRIDGE, DEVICES) == []
    settings = rules.edgeagent_bridge_settings({**BRIDGE, "cafile": "/etc/ca.pem"})
    assert settings["port"] == 8883
    assert rules.edgeagent_bridge_settings(BRIDGE)["port"] == 1883
