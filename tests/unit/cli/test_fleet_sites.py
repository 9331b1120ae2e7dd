"""The fleet view on a central broker of sites: `<prefix>/<site>/<device>/...` rows.

The network thread's message handler is fed MQTT messages directly (no broker): which
topics become rows, and under which name.
"""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeagent.cli.fleet import FleetWatch, device_key_ok
from edgeagent.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


@pytest.fixture
def watch() -> FleetWatch:
    cfg = load_config(ROOT / "examples" / "config.toml", environ={})
    assert cfg.mqtt.topic_prefix == "edgeagent"
    return FleetWatch(cfg)


def test_it_subscribes_to_devices_of_sites_too(watch):
    subscribed: list = []
    watch._client.subscribe = subscribed.extend  # type: ignore[method-assign]
    reason = mqtt.ReasonCode(mqtt.PacketTypes.CONNACK, identifier=0)
    watch._on_connect(None, None, None, reason, None)
    topics = [topic for topic, _ in subscribed]
    assert "edgeagent/+/status" in topics
    assert "edgeagent/+/heartbeat" in topics
    assert "edgeagent/+/+/status" in topics
    assert "edgeagent/+/+/heartbeat" in topics


def test_devices_of_sites_are_rows_named_site_slash_device(watch):
    beat = json.dumps({"device": "gh-01", "state": "serving", "ts": 1.0}).encode()
    watch._on_message(None, None, message("edgeagent/site-a/gh-01/status", b"online"))
    watch._on_message(None, None, message("edgeagent/site-a/gh-01/heartbeat", beat))
    watch._on_message(None, None, message("edgeagent/site-b/gh-02/status", b"offline"))
    watch._on_message(None, None, message("edgeagent/flat-01/status", b"online"))
    seen = watch.snapshot()
    assert sorted(seen) == ["flat-01", "site-a/gh-01", "site-b/gh-02"]
    assert seen["site-a/gh-01"].status == "online"
    assert seen["site-a/gh-01"].heartbeat is not None
    assert seen["site-b/gh-02"].status == "offline"


@pytest.mark.parametrize(
    "topic",
    [
        # A reply to a task whose id is "status" or "heartbeat" (any caller picks ids).
        "edgeagent/gh-01/results/status",
        "edgeagent/gh-01/results/heartbeat",
        "edgeagent/gh-01/actions/status",
        "edgeagent/a/b/c/status",
        "edgeagent//status",
        "edgeagent/site-a//status",
    ],
)
def test_other_topics_are_not_rows(watch, topic):
    watch._on_message(None, None, message(topic, b"online"))
    assert watch.snapshot() == {}


@pytest.mark.parametrize(
    ("key", "ok"),
    [("gh-01", True), ("site-a/gh-01", True), ("", False), ("gh/results", False), ("a/b/c", False)],
)
def test_device_keys(key, ok):
    assert device_key_ok(key) is ok
