"""When discovery configs go out again: on every connect, or only when they changed.

`republish = "changed"`: a reconnect to a broker that kept the device's session (and so,
most likely, its retained configs) publishes nothing when the configs are those published
last; anything else (new configs, a removal, a broker that lost the session, no digest
in the record yet) publishes them all.
"""

from __future__ import annotations

import asyncio
import json

from edgeagent.config import HomeAssistantConfig
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import DeviceInfo, Discovery, discovery_configs

TOPICS = Topics("edgeagent", "greenhouse-01", "edgeagent")
INFO = DeviceInfo("greenhouse-01", "SmolLM2.gguf", heartbeat_s=10, temperature_known=True)
CHANGED = HomeAssistantConfig(discovery=True)  # the default
CONNECT = HomeAssistantConfig(discovery=True, republish="connect")
ALL = len(discovery_configs(CHANGED, TOPICS, INFO))  # every config of the device


class _Broker:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    async def publish(self, topic: str, payload: str) -> None:
        self.published.append((topic, payload))


def _sync(cfg, tmp_path, *, session_present: bool, info: DeviceInfo = INFO) -> list:
    broker = _Broker()
    discovery = Discovery(cfg, TOPICS, info, tmp_path)
    asyncio.run(discovery.sync(broker.publish, session_present=session_present))
    return broker.published


def test_the_default_is_changed():
    assert HomeAssistantConfig().republish == "changed"


def test_a_reconnect_with_the_session_kept_publishes_nothing_when_unchanged(tmp_path):
    assert len(_sync(CHANGED, tmp_path, session_present=False)) == ALL
    assert _sync(CHANGED, tmp_path, session_present=True) == []
    assert _sync(CHANGED, tmp_path, session_present=True) == []


def test_a_broker_that_lost_the_session_gets_everything_again(tmp_path):
    _sync(CHANGED, tmp_path, session_present=False)
    assert len(_sync(CHANGED, tmp_path, session_present=False)) == ALL


def test_changed_configs_go_out_again(tmp_path):
    _sync(CHANGED, tmp_path, session_present=False)
    slower = DeviceInfo("greenhouse-01", "SmolLM2.gguf", heartbeat_s=60, temperature_known=True)
    again = _sync(CHANGED, tmp_path, session_present=True, info=slower)
    assert len(again) == ALL
    state = next(p for t, p in again if t.endswith("/state/config"))
    assert json.loads(state)["expire_after"] == 180  # 3 heartbeats of 60 s
    assert _sync(CHANGED, tmp_path, session_present=True, info=slower) == []


def test_a_removal_is_never_skipped_and_the_rest_is_then_remembered(tmp_path):
    _sync(CHANGED, tmp_path, session_present=False)
    cooler = DeviceInfo("greenhouse-01", "SmolLM2.gguf", heartbeat_s=10, temperature_known=False)
    again = _sync(CHANGED, tmp_path, session_present=True, info=cooler)
    assert [t for t, p in again if p == ""] == [
        "homeassistant/sensor/edgeagent_greenhouse-01/soc_temperature/config"
    ]
    assert _sync(CHANGED, tmp_path, session_present=True, info=cooler) == []


def test_a_record_without_a_digest_publishes_once(tmp_path):
    """A record from before the digest (or an unreadable one) is no proof of anything."""
    _sync(CHANGED, tmp_path, session_present=False)
    record = tmp_path / "homeassistant-discovery.json"
    record.write_text(json.dumps({"topics": json.loads(record.read_text())["topics"]}))
    assert len(_sync(CHANGED, tmp_path, session_present=True)) == ALL
    assert _sync(CHANGED, tmp_path, session_present=True) == []


def test_connect_publishes_on_every_connect(tmp_path):
    for session_present in (False, True, True):
        assert len(_sync(CONNECT, tmp_path, session_present=session_present)) == ALL
