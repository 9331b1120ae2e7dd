"""The hold entities in Home Assistant: the pending count, the latest hold and the
Confirm/Reject buttons, checked against HA's schema and rendered as HA renders them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import homeassistant_schema as ha
from support.homeassistant_commands import Hass, TemplateError, press

from edgeagent.config import HomeAssistantConfig
from edgeagent.protocol.heartbeat import LatestHold
from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant import DeviceInfo, discovery_configs

TOPICS = Topics("edgeagent", "greenhouse-01", "edgeagent")
INFO = DeviceInfo("greenhouse-01", "m.gguf", heartbeat_s=10, temperature_known=False)
ON = HomeAssistantConfig(discovery=True)
# Through the daemon's model (protocol/heartbeat.py): a field renamed there fails here.
LATEST = LatestHold(
    task_id="t-42",
    action="set_irrigation",
    args={"zone": 3, "minutes": 20},
    confidence=0.62,
    expires_at="2026-12-07T05:10:00Z",
).model_dump()
BEAT = {"device": "greenhouse-01", "state": "serving", "held": 2, "latest_hold": LATEST}
IDLE = {"device": "greenhouse-01", "state": "serving", "held": 0, "latest_hold": None}
OLD_DAEMON = {"device": "greenhouse-01", "state": "serving"}  # no hold fields at all


def _configs(info: DeviceInfo = INFO) -> dict[str, tuple[str, dict[str, Any]]]:
    return {t.split("/")[-2]: (t, c) for t, c in discovery_configs(ON, TOPICS, info).items()}


def _state(key: str, beat: dict[str, Any]) -> str:
    topic, config = _configs()[key]
    state = ha.render(config, "value_template", json.dumps(beat))
    ha.check_state(topic.split("/")[1], config, state)
    return state


def _attributes(beat: dict[str, Any]) -> dict[str, Any]:
    config = _configs()["latest_hold"][1]
    attributes: dict[str, Any] = json.loads(
        ha.render(config, "json_attributes_template", json.dumps(beat))
    )
    return attributes


def _available(key: str, beat: dict[str, Any], status: str = "online") -> bool:
    """availability_mode all: every entry of the list says available."""
    config = _configs()[key][1]
    assert config["availability_mode"] == "all"
    states = []
    for entry in config["availability"]:
        payload = status if entry["topic"] == TOPICS.status else json.dumps(beat)
        rendered = (
            ha.render(entry, "value_template", payload) if "value_template" in entry else payload
        )
        states.append(rendered == entry.get("payload_available", "online"))
    return all(states)


def _hass(beat: dict[str, Any], sensor: str = "sensor.edgeagent_greenhouse_01_latest_hold") -> Hass:
    """HA's registry for the device, its Latest hold sensor's attributes from `beat`."""
    hass = Hass()
    hass.add("button.edgeagent_greenhouse_01_confirm_hold", "dev-1")
    hass.add("button.edgeagent_greenhouse_01_reject_hold", "dev-1")
    hass.add("sensor.edgeagent_greenhouse_01_state", "dev-1", {"friendly_name": "State"})
    hass.add(
        "sensor.edgeagent_greenhouse_01_last_action",
        "dev-1",
        {"name": "notify", "task_id": "t-1", "at": "2026-12-07T04:00:00+00:00"},
    )
    hass.add(sensor, "dev-1", _attributes(beat))
    return hass


def test_the_hold_entities_pass_home_assistants_schema():
    configs = _configs()
    for key in ("pending_holds", "latest_hold", "confirm_hold", "reject_hold"):
        topic, config = configs[key]
        component, _ = ha.validate("homeassistant", topic, json.dumps(config))
        assert component == (
            "button" if key.endswith("_hold") and key != "latest_hold" else "sensor"
        )
    assert (
        configs["confirm_hold"][1]["command_topic"] == "edgeagent/greenhouse-01/held/latest/confirm"
    )
    assert (
        configs["reject_hold"][1]["command_topic"] == "edgeagent/greenhouse-01/held/latest/reject"
    )
    assert configs["confirm_hold"][1]["retain"] is False
    assert configs["confirm_hold"][1]["qos"] == 1


def test_a_catalog_without_dispatched_actions_has_no_hold_entities():
    without = _configs(
        DeviceInfo("greenhouse-01", "m", heartbeat_s=10, temperature_known=False, holds=False)
    )
    assert not {"pending_holds", "latest_hold", "confirm_hold", "reject_hold"} & set(without)


def test_the_sensors_show_the_pending_count_and_the_latest_hold():
    assert _state("pending_holds", BEAT) == "2"
    assert _state("pending_holds", IDLE) == "0"
    assert _state("pending_holds", OLD_DAEMON) == "None"  # unknown, no template warning
    assert _state("latest_hold", BEAT) == "set_irrigation"
    assert _state("latest_hold", IDLE) == "none"
    assert _state("latest_hold", OLD_DAEMON) == "none"
    assert _attributes(BEAT) == {k: v for k, v in LATEST.items() if k != "action"}
    assert _attributes(IDLE) == {}  # HA clears the attributes
    assert _attributes(OLD_DAEMON) == {}
    assert _configs()["latest_hold"][1]["json_attributes_topic"] == TOPICS.heartbeat


def test_the_buttons_are_available_only_while_a_hold_is_pending_and_the_device_online():
    for key in ("confirm_hold", "reject_hold"):
        assert _available(key, BEAT)
        assert not _available(key, IDLE)
        assert not _available(key, OLD_DAEMON)
        assert not _available(key, BEAT, status="offline")


@pytest.mark.parametrize("key", ["confirm_hold", "reject_hold"])
def test_a_press_names_the_hold_home_assistant_shows(key):
    config = _configs()[key][1]
    payload = press(config, entity_id=f"button.edgeagent_greenhouse_01_{key}", hass=_hass(BEAT))
    assert json.loads(payload) == {"by": "homeassistant", "task_id": "t-42"}


def test_a_renamed_latest_hold_sensor_is_still_found():
    config = _configs()["confirm_hold"][1]
    hass = _hass(BEAT, sensor="sensor.what_the_greenhouse_wants")
    payload = press(config, entity_id="button.edgeagent_greenhouse_01_confirm_hold", hass=hass)
    assert json.loads(payload)["task_id"] == "t-42"


def test_another_devices_hold_is_never_named():
    config = _configs()["confirm_hold"][1]
    hass = _hass(IDLE)
    other = {**LATEST, "task_id": "other-device-hold"}
    hass.add("sensor.edgeagent_greenhouse_02_latest_hold", "dev-2", other)
    with pytest.raises(TemplateError, match="no default was specified"):
        press(config, entity_id="button.edgeagent_greenhouse_01_confirm_hold", hass=hass)


def test_a_press_without_a_hold_shown_publishes_nothing():
    """The Latest hold sensor disabled (no state) or nothing pending in HA's view: the
    template fails, HA shows the error and publishes nothing (a press never confirms a
    hold nobody saw)."""
    config = _configs()["confirm_hold"][1]
    hass = _hass(IDLE)
    with pytest.raises(TemplateError, match="shows no pending hold"):
        press(config, entity_id="button.edgeagent_greenhouse_01_confirm_hold", hass=hass)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"command_topic": "edgeagent/+/held/latest/confirm"}, "wildcards are not allowed"),
        ({"command_topic": ""}, "topic must be a non-empty string"),
        ({"state_topic": "x"}, "does not know"),  # a button has no state
        ({"availability": [{"topic": "x", "template": "y"}]}, "availability entries take only"),
        ({"availability": [{"topic": "a/#/b"}]}, "'#' only"),
        ({"device_class": "valve"}, "unknown button device_class"),
        ({"availability_topic": "x"}, "exclusive"),
    ],
)
def test_the_schema_mirror_rejects_bad_buttons(change, reason):
    """The checker must be able to fail: known-bad button configs are refused."""
    topic, config = _configs()["confirm_hold"]
    ha.validate("homeassistant", topic, json.dumps(config))  # valid as published
    with pytest.raises(ha.Invalid, match=reason):
        ha.validate("homeassistant", topic, json.dumps({**config, **change}))
