"""Home Assistant's MQTT discovery schema for the components edgeagent publishes.

A mirror, rule by rule, of what Home Assistant (2025.x) checks when a discovery config
arrives, from its sources (homeassistant/components/mqtt/):

* discovery.py: the topic `<prefix>/<component>/[<node_id>/]<object_id>/config`
  (TOPIC_MATCHER), a JSON object payload, an empty payload removes the entity;
* config.py MQTT_RO_SCHEMA: `state_topic` (required, a valid subscribe topic),
  `value_template`, `qos`, `encoding`;
* schemas.py MQTT_ENTITY_COMMON_SCHEMA: availability (`availability_topic` xor
  `availability`), `device` (MQTT_ENTITY_DEVICE_INFO_SCHEMA: at least one identifier or
  connection, no unknown keys), `origin` (MQTT_ORIGIN_INFO_SCHEMA: `name` required),
  `entity_category`, `icon`, `json_attributes_*`, `unique_id`, ...;
* sensor.py DISCOVERY_SCHEMA + validate_sensor_state_and_device_class_config, and the
  device class / state class / unit tables of components/sensor/const.py;
* binary_sensor.py DISCOVERY_SCHEMA and components/binary_sensor BinarySensorDeviceClass;
* button.py DISCOVERY_SCHEMA (`command_topic` required, a valid publish topic) and the
  availability list of schemas.py (MQTT_AVAILABILITY_LIST_SCHEMA).

One deliberate difference: Home Assistant drops unknown top-level keys (REMOVE_EXTRA);
here they are errors, because a key HA silently drops is a typo in our payload.
The templates are rendered with Jinja2's sandbox, as HA does, against a real payload.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)

SENSOR_DEVICE_CLASSES = {
    "date", "enum", "timestamp", "apparent_power", "aqi", "area", "atmospheric_pressure",
    "battery", "blood_glucose_concentration", "carbon_monoxide", "carbon_dioxide",
    "conductivity", "current", "data_rate", "data_size", "distance", "duration", "energy",
    "energy_distance", "energy_storage", "frequency", "gas", "humidity", "illuminance",
    "irradiance", "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide",
    "nitrous_oxide", "ozone", "ph", "pm1", "pm10", "pm25", "power_factor", "power",
    "precipitation", "precipitation_intensity", "pressure", "reactive_power",
    "signal_strength", "sound_pressure", "speed", "sulphur_dioxide", "temperature",
    "volatile_organic_compounds", "volatile_organic_compounds_parts", "voltage", "volume",
    "volume_storage", "volume_flow_rate", "water", "weight", "wind_direction", "wind_speed",
}  # fmt: skip
NON_NUMERIC_DEVICE_CLASSES = {"date", "enum", "timestamp"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
ALL_STATE_CLASSES = set(STATE_CLASSES)
# DEVICE_CLASS_UNITS and DEVICE_CLASS_STATE_CLASSES, for the classes edgeagent uses.
UNITS = {
    "data_size": {
        "bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB",
        "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB",
    },
    "temperature": {"°C", "°F", "K"},
}  # fmt: skip
DEVICE_CLASS_STATE_CLASSES = {
    "data_size": ALL_STATE_CLASSES,
    "temperature": {"measurement"},
    "enum": set(),
    "timestamp": set(),
    "date": set(),
}
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
    "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
    "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip
ENTITY_CATEGORIES = {"config", "diagnostic"}

_STRING, _TEMPLATE, _TOPIC, _POS_INT, _BOOL = "string", "template", "topic", "pos_int", "bool"
BASE_KEYS = {"qos": "qos", "encoding": _STRING}  # config.py SCHEMA_BASE (a button's)
RO_KEYS = {"state_topic": _TOPIC, "value_template": _TEMPLATE, **BASE_KEYS}
COMMON_KEYS = {
    "availability_topic": _TOPIC,
    "availability_template": _TEMPLATE,
    "payload_available": _STRING,
    "payload_not_available": _STRING,
    "availability_mode": "availability_mode",
    "availability": "availability",
    "device": "device",
    "origin": "origin",
    "enabled_by_default": _BOOL,
    "entity_category": "entity_category",
    "icon": "icon",
    "json_attributes_topic": _TOPIC,
    "json_attributes_template": _TEMPLATE,
    "object_id": _STRING,
    "unique_id": _STRING,
}
COMPONENT_KEYS = {
    "sensor": {
        "device_class": "sensor_device_class",
        "expire_after": _POS_INT,
        "force_update": _BOOL,
        "last_reset_value_template": _TEMPLATE,
        "name": _STRING,
        "options": "options",
        "suggested_display_precision": _POS_INT,
        "state_class": "state_class",
        "unit_of_measurement": _STRING,
    },
    "button": {
        "command_template": _TEMPLATE,
        "command_topic": "publish_topic",
        "device_class": "button_device_class",
        "name": _STRING,
        "payload_press": _STRING,
        "retain": _BOOL,
    },
    "binary_sensor": {
        "device_class": "binary_sensor_device_class",
        "expire_after": _POS_INT,
        "force_update": _BOOL,
        "name": _STRING,
        "off_delay": _POS_INT,
        "payload_off": _STRING,
        "payload_on": _STRING,
    },
}
DEVICE_KEYS = {
    "identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
    "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url",
}  # fmt: skip
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}


class Invalid(ValueError):  # noqa: N818 - named after voluptuous.Invalid, which HA raises
    pass


def valid_subscribe_topic(value: Any) -> str:
    """util.py valid_topic + valid_subscribe_topic."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"topic must be a non-empty string: {value!r}")
    if len(value.encode("utf-8")) > 65535 or "\0" in value:
        raise Invalid(f"invalid topic {value!r}")
    for i, level in enumerate(value.split("/")):
        if "#" in level and (level != "#" or i != len(value.split("/")) - 1):
            raise Invalid(f"'#' only as the whole last level: {value!r}")
        if "+" in level and level != "+":
            raise Invalid(f"'+' only as a whole level: {value!r}")
    return value


def _check(kind: str, key: str, value: Any) -> None:  # noqa: C901, PLR0912 - one branch per validator, like the schema it mirrors
    if kind == _STRING:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise Invalid(f"{key}: expected a string, got {value!r}")
    elif kind == _TEMPLATE:
        if not isinstance(value, str):
            raise Invalid(f"{key}: a template is a string")
        ImmutableSandboxedEnvironment().parse(value)  # TemplateSyntaxError if broken
    elif kind == _TOPIC:
        valid_subscribe_topic(value)
    elif kind == _POS_INT:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Invalid(f"{key}: expected an integer >= 0, got {value!r}")
    elif kind == _BOOL:
        if not isinstance(value, bool):
            raise Invalid(f"{key}: expected a boolean")
    elif kind == "qos":
        if value not in (0, 1, 2):
            raise Invalid(f"qos must be 0, 1 or 2, got {value!r}")
    elif kind == "availability_mode":
        if value not in ("all", "any", "latest"):
            raise Invalid(f"availability_mode {value!r}")
    elif kind in _MORE_CHECKS:
        _MORE_CHECKS[kind](key, value)
    elif kind == "device":
        _check_device(value)
    elif kind == "origin":
        if not isinstance(value, dict) or "name" not in value or set(value) - ORIGIN_KEYS:
            raise Invalid(f"origin needs name and only {sorted(ORIGIN_KEYS)}: {value!r}")
    elif kind == "entity_category":
        if value not in ENTITY_CATEGORIES:
            raise Invalid(f"entity_category {value!r}")
    elif kind == "icon":
        if not isinstance(value, str) or ":" not in value:
            raise Invalid(f"icons are prefix:name, e.g. mdi:robot, got {value!r}")
    elif kind == "options":
        if not isinstance(value, list):
            raise Invalid("options must be a list")
    elif kind == "sensor_device_class":
        if value is not None and value not in SENSOR_DEVICE_CLASSES:
            raise Invalid(f"unknown sensor device_class {value!r}")
    elif kind == "binary_sensor_device_class":
        if value is not None and value not in BINARY_SENSOR_DEVICE_CLASSES:
            raise Invalid(f"unknown binary_sensor device_class {value!r}")
    elif kind == "state_class":
        if value is not None and value not in STATE_CLASSES:
            raise Invalid(f"unknown state_class {value!r}")
    else:  # pragma: no cover - a key table names a validator that does not exist
        raise AssertionError(kind)


def _check_availability(_key: str, value: Any) -> None:
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict) or set(item) - AVAILABILITY_KEYS:
            raise Invalid(f"availability entries take only {sorted(AVAILABILITY_KEYS)}")
        valid_subscribe_topic(item.get("topic"))
        if "value_template" in item:
            _check(_TEMPLATE, "availability.value_template", item["value_template"])


def _check_publish_topic(key: str, value: Any) -> None:
    """util.py valid_publish_topic."""
    if "+" in valid_subscribe_topic(value) or "#" in value:
        raise Invalid(f"{key}: wildcards are not allowed in a publish topic: {value!r}")


def _check_button_device_class(_key: str, value: Any) -> None:
    if value is not None and value not in ("identify", "restart", "update"):
        raise Invalid(f"unknown button device_class {value!r}")


_MORE_CHECKS = {
    "availability": _check_availability,
    "publish_topic": _check_publish_topic,
    "button_device_class": _check_button_device_class,
}


def _check_device(device: Any) -> None:
    if not isinstance(device, dict):
        raise Invalid("device must be an object")
    if extra := set(device) - DEVICE_KEYS:
        raise Invalid(f"device: extra keys not allowed: {sorted(extra)}")
    for key, value in device.items():
        if key in ("identifiers", "connections"):
            if not isinstance(value, (list, str)):
                raise Invalid(f"device.{key} must be a list")
        elif not isinstance(value, str):
            raise Invalid(f"device.{key} must be a string")
    if not device.get("identifiers") and not device.get("connections"):
        raise Invalid("Device must have at least one identifying value")


def _check_sensor(config: Mapping[str, Any]) -> None:
    """sensor.py validate_sensor_state_and_device_class_config, plus the sensor entity's
    own refusals (a non-numeric class with a unit or state class; a config category)."""
    device_class = config.get("device_class")
    state_class = config.get("state_class")
    unit = config.get("unit_of_measurement")
    if "last_reset_value_template" in config and state_class != "total":
        raise Invalid("last_reset_value_template needs state_class total")
    if (options := config.get("options")) is not None:
        if not options:
            raise Invalid("An empty options list is not allowed")
        if state_class or unit:
            raise Invalid("options are not allowed with state_class or unit_of_measurement")
        if device_class != "enum":
            raise Invalid("options must be used together with device class enum")
    if device_class in NON_NUMERIC_DEVICE_CLASSES and (
        state_class or unit or "suggested_display_precision" in config
    ):
        raise Invalid(f"device class {device_class} is not numeric: no unit or state class")
    if device_class in UNITS and unit not in UNITS[device_class]:
        raise Invalid(f"unit {unit!r} is not valid with device class {device_class}")
    if (
        device_class in DEVICE_CLASS_STATE_CLASSES
        and state_class is not None
        and state_class not in DEVICE_CLASS_STATE_CLASSES[device_class]
    ):
        raise Invalid(f"state class {state_class} is not valid with device class {device_class}")
    if config.get("entity_category") == "config":
        raise Invalid("sensors cannot have entity_category config")


def validate(prefix: str, topic: str, payload: bytes | str) -> tuple[str, dict[str, Any]]:  # noqa: C901 - the checks of discovery.py in their order
    """(component, config) of a discovery message, or Invalid with the reason."""
    if not topic.startswith(prefix + "/"):
        raise Invalid(f"{topic} is not under the discovery prefix {prefix}")
    match = TOPIC_MATCHER.fullmatch(topic[len(prefix) + 1 :])
    if match is None:
        raise Invalid(f"{topic} does not match <component>/[<node_id>/]<object_id>/config")
    component = match["component"]
    if component not in COMPONENT_KEYS:
        raise Invalid(f"component {component} is not one edgeagent publishes")
    config = json.loads(payload)
    if not isinstance(config, dict):
        raise Invalid("the discovery payload must be a JSON object")
    if "~" in config:
        raise Invalid("no base topic: edgeagent publishes full topics")
    # Abbreviated keys (HA's abbreviations.py) fail below: the tables name full keys only.
    base = BASE_KEYS if component == "button" else RO_KEYS
    allowed = {**base, **COMMON_KEYS, **COMPONENT_KEYS[component]}
    if extra := set(config) - set(allowed):
        raise Invalid(f"keys Home Assistant does not know for {component}: {sorted(extra)}")
    required = "command_topic" if component == "button" else "state_topic"
    if required not in config:
        raise Invalid(f"{required} is required")
    if "availability_topic" in config and "availability" in config:
        raise Invalid("availability_topic and availability are exclusive")
    if "device" in config and "unique_id" not in config:
        raise Invalid("device info only works with a unique_id")
    for key, value in config.items():
        _check(allowed[key], key, value)
    if component == "sensor":
        _check_sensor(config)
    return component, config


def _warning_undefined(warnings: list[str]) -> type[jinja2.Undefined]:
    """HA's LoggingUndefined (helpers/template.py): printing, iterating or testing a
    missing value logs `Template variable warning: ...` - on every message received."""

    class WarningUndefined(jinja2.Undefined):
        def _warn(self) -> None:
            warnings.append(self._undefined_message)

        def __str__(self) -> str:
            self._warn()
            return super().__str__()

        def __iter__(self) -> Any:
            self._warn()
            return super().__iter__()

        def __bool__(self) -> bool:
            self._warn()
            return super().__bool__()

    return WarningUndefined


def render(config: Mapping[str, Any], key: str, payload: bytes | str) -> str:
    """A template of the config rendered against a payload, as HA's MQTT entities do:
    `value_json` is the parsed JSON, and the result is taken as a string. A template
    that would make HA log a template variable warning is Invalid."""
    warnings: list[str] = []
    env = ImmutableSandboxedEnvironment(undefined=_warning_undefined(warnings))
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    state = str(env.from_string(config[key]).render(value=text, value_json=json.loads(text)))
    if warnings:
        raise Invalid(f"Template variable warning: {'; '.join(warnings)} ({config[key]})")
    return state


def check_state(component: str, config: Mapping[str, Any], state: str) -> None:
    """A rendered state is one HA accepts for this entity (or "None": unknown)."""
    if component == "binary_sensor":
        if state not in (config.get("payload_on", "ON"), config.get("payload_off", "OFF")):
            raise Invalid(f"{state!r} is neither payload_on nor payload_off")
        return
    device_class = config.get("device_class")
    numeric = device_class not in NON_NUMERIC_DEVICE_CLASSES and bool(
        device_class
        or config.get("state_class")
        or config.get("unit_of_measurement")
        or "suggested_display_precision" in config
    )
    if numeric:
        if state != "None" and not math.isfinite(float(state)):
            raise Invalid(f"{state!r} is not a number")
    elif device_class == "enum":
        if state not in config["options"]:
            raise Invalid(f"{state!r} is not one of {config['options']}")
    elif device_class == "timestamp":
        parsed = datetime.fromisoformat(state)
        if parsed.tzinfo is None:
            raise Invalid(f"timestamps need a time zone: {state!r}")
