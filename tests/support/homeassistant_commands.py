"""A button's command template rendered as Home Assistant renders it on a press.

homeassistant/components/mqtt/models.py MqttCommandTemplate.async_render: the variables
are `value` (payload_press), `entity_id` and `name` of the button, and the template has
Home Assistant's functions. The ones the hold buttons use, as helpers/template.py
defines them: `device_id(entity_id)` (the entity's device in the entity registry, or
None), `device_entities(device_id)` (the registry's entity ids of that device, [] for
None), `state_attr(entity_id, name)` (an attribute of the current state, or None), and
the `float` filter, which raises "no default was specified" for a text that is not a
number (HA turns that into an error shown to the user, and publishes nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from support.homeassistant_schema import _warning_undefined


class TemplateError(Exception):
    """HA's TemplateError: the press fails, nothing is published."""


@dataclass
class Hass:
    """The entity registry (entity id -> device id) and the states' attributes."""

    devices: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, entity_id: str, device: str, attributes: dict[str, Any] | None = None) -> None:
        self.devices[entity_id] = device
        if attributes is not None:
            self.attributes[entity_id] = attributes

    def device_id(self, entity_id: str) -> str | None:
        return self.devices.get(entity_id)

    def device_entities(self, device: str | None) -> list[str]:
        return [e for e, d in self.devices.items() if device is not None and d == device]

    def state_attr(self, entity_id: str, name: str) -> Any:
        return self.attributes.get(entity_id, {}).get(name)


def _float(value: Any, default: Any = None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        if default is not None:
            return float(default)
        raise TemplateError(
            f"float got invalid input '{value}' when rendering template, but no default was"
            " specified"
        ) from None


def press(config: dict[str, Any], *, entity_id: str, hass: Hass) -> str:
    """The payload a press of the button publishes on its command_topic (or TemplateError)."""
    warnings: list[str] = []
    env = ImmutableSandboxedEnvironment(undefined=_warning_undefined(warnings))
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.filters["float"] = _float
    env.globals.update(
        device_id=hass.device_id,
        device_entities=hass.device_entities,
        state_attr=hass.state_attr,
    )
    template = config.get("command_template")
    value = config.get("payload_press", "PRESS")
    if template is None:
        return str(value)
    rendered = env.from_string(template).render(value=value, entity_id=entity_id, name="")
    if warnings:
        raise TemplateError(f"Template variable warning: {'; '.join(warnings)}")
    return rendered
