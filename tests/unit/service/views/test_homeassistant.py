"""Home Assistant discovery payloads: built from config and topics, checked against HA's schema."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jinja2
import pytest
from support import homeassistant_schema as ha

from edgeagent.config import HomeAssistantConfig
from edgeagent.protocol.heartbeat import Heartbeat
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import (
    MIN_HOME_ASSISTANT,
    DeviceInfo,
    Discovery,
    discovery_configs,
    last_action_message,
    last_action_topic,
    node_id,
    plan,
)
from edgeagent.service.views.homeassistant_entities import STATES

ROOT = Path(__file__).resolve().parents[4]
TOPICS = Topics("edgeagent", "greenhouse-01", "edgeagent")
INFO = DeviceInfo("greenhouse-01", "SmolLM2.gguf", heartbeat_s=10, temperature_known=True)
ON = HomeAssistantConfig(discovery=True)
# Through the daemon's model (protocol/heartbeat.py): the templates are tested on a
# heartbeat the daemon can publish, and a field renamed there fails here.
HEARTBEAT = Heartbeat.model_validate(
    {
        "device": "greenhouse-01",
        "state": "serving",
        "ts": 1764403200.5,
        "queue": {"depth": 2, "capacity": 16},
        "tasks": {"done": 42, "failed": 1, "busy": 0},
        "tokens_per_s": 11.8,
        "context": {"n_ctx": 4096, "budget": 3072, "available_mb": 1210.4},
        "memory": {"rss_mb": 612.3, "host_available_mb": 2210.0},
        "board": {"temp_c": 51.2},
        "store": {"state": "ok"},
    }
).to_json()
HEARTBEAT_NO_BOARD = {k: v for k, v in HEARTBEAT.items() if k != "board"}
LAST_ACTION = {"name": "set_irrigation", "at": "2026-01-05T10:00:00+00:00", "task_id": "t1"}


def _by_key(configs):
    return {topic.split("/")[-2]: (topic, body) for topic, body in configs.items()}


def _sensors(configs):
    """Every entity that has a state (the hold buttons only command)."""
    return {key: entry for key, entry in _by_key(configs).items() if "/button/" not in entry[0]}


def test_every_config_passes_home_assistants_schema():
    configs = discovery_configs(ON, TOPICS, INFO)
    assert len(configs) == 15
    components = {ha.validate("homeassistant", t, json.dumps(c))[0] for t, c in configs.items()}
    assert components == {"sensor", "binary_sensor", "button"}


def test_one_device_with_availability_on_the_status_topic():
    configs = discovery_configs(ON, TOPICS, INFO)
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1
    device = next(iter(configs.values()))["device"]
    assert device == {
        "identifiers": ["edgeagent-greenhouse-01"],
        "name": "edgeagent greenhouse-01",
        "manufacturer": "edgeagent",
        "model": "SmolLM2.gguf",
        "sw_version": INFO.version,
    }
    assert "via_device" not in device
    for _topic, config in _sensors(configs).values():
        assert config["availability_topic"] == "edgeagent/greenhouse-01/status"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online",
            "offline",
        )
    # The buttons need the status too (and a pending hold: test_homeassistant_holds.py).
    for key in ("confirm_hold", "reject_hold"):
        status, _beat = _by_key(configs)[key][1]["availability"]
        assert status == {
            "topic": "edgeagent/greenhouse-01/status",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    unique = [c["unique_id"] for c in configs.values()]
    assert len(set(unique)) == len(unique)


def test_topics_and_names_follow_the_config():
    cfg = HomeAssistantConfig(discovery=True, prefix="ha/site1", name="Greenhouse agent")
    configs = discovery_configs(cfg, TOPICS, INFO)
    assert all(t.startswith("ha/site1/") and t.endswith("/config") for t in configs)
    assert "ha/site1/sensor/edgeagent_greenhouse-01/state/config" in configs
    assert {c["device"]["name"] for c in configs.values()} == {"Greenhouse agent"}


def test_node_id_is_safe_for_home_assistant_and_keeps_devices_apart():
    assert node_id("pi-07_b") == "edgeagent_pi-07_b"
    dotted, underscored = node_id("pi.07"), node_id("pi_07")
    assert dotted != underscored
    assert ha.TOPIC_MATCHER.fullmatch(f"sensor/{dotted}/state/config")


def test_templates_render_states_home_assistant_accepts():
    configs = _sensors(discovery_configs(ON, TOPICS, INFO))
    expected = {
        "state": "serving",
        "memory_pressure": "OFF",
        "queue_depth": "2",
        "tasks_done": "42",
        "tasks_failed": "1",
        "tokens_per_second": "11.8",
        "context_budget": "3072",
        "memory_available": "1210.4",
        "soc_temperature": "51.2",
        "last_action": "set_irrigation",
        "last_action_time": "2026-01-05T10:00:00+00:00",
        "pending_holds": "None",  # a daemon without holds: unknown
        "latest_hold": "none",
    }
    for key, (topic, config) in configs.items():
        payload = LAST_ACTION if config["state_topic"].endswith("last_action") else HEARTBEAT
        component = topic.split("/")[1]
        state = ha.render(config, "value_template", json.dumps(payload))
        ha.check_state(component, config, state)
        assert state == expected[key], key
    attributes = ha.render(
        configs["last_action"][1], "json_attributes_template", json.dumps(LAST_ACTION)
    )
    assert json.loads(attributes)["task_id"] == "t1"


def test_early_heartbeat_values_are_unknown_not_errors():
    """Before the first task and the governor's first reading."""
    beat = {**HEARTBEAT, "state": "paused", "tokens_per_s": None, "context": {"n_ctx": 512}}
    configs = _by_key(discovery_configs(ON, TOPICS, INFO))
    states = {}
    for key in ("tokens_per_second", "context_budget", "memory_available", "memory_pressure"):
        topic, config = configs[key]
        states[key] = ha.render(config, "value_template", json.dumps(beat))
        ha.check_state(topic.split("/")[1], config, states[key])
    assert states == {
        "tokens_per_second": "None",
        "context_budget": "None",
        "memory_available": "2210.0",
        "memory_pressure": "ON",
    }


def test_templates_render_without_a_warning_when_optional_keys_are_missing():
    """A heartbeat without `board` (nothing known this time) and before the governor's
    first reading: HA would log a template variable warning with each one."""
    beat = {k: v for k, v in HEARTBEAT.items() if k != "board"} | {"context": {"n_ctx": 512}}
    configs = _sensors(discovery_configs(ON, TOPICS, INFO))
    states = {}
    for key, (topic, config) in configs.items():
        payload = LAST_ACTION if config["state_topic"].endswith("last_action") else beat
        states[key] = ha.render(config, "value_template", json.dumps(payload))
        ha.check_state(topic.split("/")[1], config, states[key])
    assert states["soc_temperature"] == "None"  # unknown, as HA shows it
    assert states["context_budget"] == "None"
    assert states["memory_available"] == "2210.0"


def test_the_template_check_catches_what_home_assistant_warns_about():
    for template in (
        "{{ value_json.board.temp_c | default(None) }}",  # undefined.temp_c: an error
        "{{ (value_json.board or {}).temp_c }}",  # testing an undefined: a warning
        "{{ value_json.board }}",  # printing one: a warning
    ):
        with pytest.raises((ha.Invalid, jinja2.UndefinedError)):
            ha.render(
                {"value_template": template}, "value_template", json.dumps(HEARTBEAT_NO_BOARD)
            )


def test_the_docs_name_the_oldest_home_assistant_that_honours_the_state_options():
    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    assert f"Home Assistant {MIN_HOME_ASSISTANT} or later" in text


def test_state_options_are_the_daemon_states():
    from edgeagent.service.daemon import State  # noqa: PLC0415 - the daemon module is heavy

    assert set(STATES) == {str(s) for s in State}


def test_temperature_only_where_known():
    known = _by_key(discovery_configs(ON, TOPICS, INFO))
    unknown = _by_key(
        discovery_configs(
            ON, TOPICS, DeviceInfo("greenhouse-01", "m", heartbeat_s=10, temperature_known=False)
        )
    )
    assert "soc_temperature" in known
    assert "soc_temperature" not in unknown
    assert known["soc_temperature"][1]["unit_of_measurement"] == "°C"


def test_live_values_expire_after_missed_heartbeats_the_last_action_does_not():
    configs = _by_key(discovery_configs(ON, TOPICS, INFO))
    assert configs["queue_depth"][1]["expire_after"] == 30
    assert "expire_after" not in configs["last_action"][1]
    assert configs["last_action"][1]["state_topic"] == last_action_topic(TOPICS)
    slow = DeviceInfo("greenhouse-01", "m", heartbeat_s=60, temperature_known=False)
    assert _by_key(discovery_configs(ON, TOPICS, slow))["queue_depth"][1]["expire_after"] == 180


def test_plan_publishes_wanted_and_removes_what_is_no_longer_wanted():
    wanted = {"p/sensor/n/a/config": {"x": 1}, "p/sensor/n/b/config": {"x": 2}}
    before = {"p/sensor/n/b/config", "p/sensor/n/old/config"}
    assert plan(wanted, before, enabled=True) == [
        ("p/sensor/n/a/config", '{"x": 1}'),
        ("p/sensor/n/b/config", '{"x": 2}'),
        ("p/sensor/n/old/config", ""),
    ]
    assert plan(wanted, before, enabled=False) == [
        ("p/sensor/n/b/config", ""),
        ("p/sensor/n/old/config", ""),
    ]
    assert plan(wanted, set(), enabled=False) == []


class _Broker:
    def __init__(self, fail: bool = False) -> None:
        self.retained: dict[str, str] = {}
        self.fail = fail

    async def publish(self, topic: str, payload: str) -> None:
        if self.fail:
            raise ConnectionError("lost")
        self.retained[topic] = payload


def test_sync_on_then_off_removes_exactly_what_was_published(tmp_path):
    broker = _Broker()
    asyncio.run(Discovery(ON, TOPICS, INFO, tmp_path).sync(broker.publish))
    published = set(broker.retained)
    assert len(published) == 15
    assert (tmp_path / "homeassistant-discovery.json").is_file()

    broker.retained.clear()
    off = HomeAssistantConfig(discovery=False)
    asyncio.run(Discovery(off, TOPICS, INFO, tmp_path).sync(broker.publish))
    assert broker.retained == dict.fromkeys(published, "")
    assert not (tmp_path / "homeassistant-discovery.json").exists()

    broker.retained.clear()  # off and nothing published before: nothing to say at all
    asyncio.run(Discovery(off, TOPICS, INFO, tmp_path).sync(broker.publish))
    assert broker.retained == {}


def test_sync_forgets_nothing_when_publishing_fails(tmp_path):
    asyncio.run(Discovery(ON, TOPICS, INFO, tmp_path).sync(_Broker().publish))
    record = (tmp_path / "homeassistant-discovery.json").read_text()
    off = HomeAssistantConfig(discovery=False)
    with pytest.raises(ConnectionError):
        asyncio.run(Discovery(off, TOPICS, INFO, tmp_path).sync(_Broker(fail=True).publish))
    assert (tmp_path / "homeassistant-discovery.json").read_text() == record


def test_a_dropped_entity_is_removed(tmp_path):
    broker = _Broker()
    asyncio.run(Discovery(ON, TOPICS, INFO, tmp_path).sync(broker.publish))
    cooler = DeviceInfo("greenhouse-01", "m", heartbeat_s=10, temperature_known=False)
    broker.retained.clear()
    asyncio.run(Discovery(ON, TOPICS, cooler, tmp_path).sync(broker.publish))
    removed = [t for t, p in broker.retained.items() if p == ""]
    assert removed == ["homeassistant/sensor/edgeagent_greenhouse-01/soc_temperature/config"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"device_class": "enum", "unit_of_measurement": "x"}, "options are not allowed"),
        ({"device_class": "data_size", "unit_of_measurement": "MB/s"}, "not valid with"),
        ({"state_class": "sum"}, "unknown state_class"),
        ({"entity_category": "config"}, "cannot have entity_category config"),
        ({"icon": "robot"}, "prefix:name"),
        ({"state_topic": "a/#/b"}, "'#' only"),
        ({"device": {"name": "x"}}, "at least one identifying"),
        ({"stat_t": "x"}, "does not know"),
    ],
)
def test_the_schema_mirror_rejects_what_home_assistant_rejects(change, reason):
    """The checker must be able to fail: known-bad payloads are refused."""
    key = "state" if "options" in reason else "queue_depth"
    topic, config = _by_key(discovery_configs(ON, TOPICS, INFO))[key]
    ha.validate("homeassistant", topic, json.dumps(config))  # valid as published
    with pytest.raises(ha.Invalid, match=reason):
        ha.validate("homeassistant", topic, json.dumps({**config, **change}))


def test_last_action_message_is_what_the_last_action_entities_read():
    from datetime import UTC, datetime  # noqa: PLC0415 - only here

    topic, payload = last_action_message(
        TOPICS,
        "t9",
        {"action": "notify", "args": {"text": "frost"}},
        datetime(2026, 1, 5, 10, 0, 0, 250000, tzinfo=UTC),
    )
    assert topic == "edgeagent/greenhouse-01/last_action"
    assert json.loads(payload) == {
        "name": "notify",
        "at": "2026-01-05T10:00:00.250+00:00",
        "task_id": "t9",
        "args": {"text": "frost"},
    }
    configs = _by_key(discovery_configs(ON, TOPICS, INFO))
    for key in ("last_action", "last_action_time"):
        _topic, config = configs[key]
        ha.check_state("sensor", config, ha.render(config, "value_template", payload))
