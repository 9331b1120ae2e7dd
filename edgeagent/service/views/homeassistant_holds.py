"""Home Assistant entities for held actions: what is pending, and Confirm/Reject buttons.

The daemon's heartbeat carries `held` (the pending count) and `latest_hold` (`task_id`,
`action`, `args`, `confidence`, `expires_at`, or null); two sensors show them. The
buttons publish to `<base>/held/latest/confirm` and `.../reject` (docs/protocol.md,
"Held actions"), which the device resolves against its newest pending hold.

A button press names the hold Home Assistant shows: its command template looks up the
Latest hold sensor among the entities of the button's own device (by its `expires_at`
attribute, which only that sensor has, so a renamed entity id still works) and sends
`{"by": "homeassistant", "task_id": <its task id>}`. When a newer hold arrived on the
device in the meantime, the device refuses the press (a typed error) instead of
confirming a hold nobody has seen. When Home Assistant shows no hold at all (the sensor
is disabled), the template fails on purpose (`float` of a text, HA's "no default was
specified" error is shown to the user) and nothing is published. The buttons are
available only while the heartbeat says a hold is pending and the device is online.
"""

from __future__ import annotations

from typing import Any

from edgeagent.protocol.topics import Topics
from edgeagent.service.views.homeassistant_entities import Entity

BY = "homeassistant"
CONFIRM_SOURCE = "held/latest/confirm"
REJECT_SOURCE = "held/latest/reject"

# The Latest hold sensor's attributes: the hold without its action (the state).
_ATTRIBUTES = (
    "{%- set hold = value_json.get('latest_hold') or {} -%}"
    "{{ {'task_id': hold.get('task_id'), 'args': hold.get('args'),"
    " 'confidence': hold.get('confidence'), 'expires_at': hold.get('expires_at')} | tojson"
    " if hold else '{}' }}"
)

# `entity_id` is the button's own (HA passes it to every MQTT command template).
COMMAND_TEMPLATE = (
    "{%- set ns = namespace(task_id=none) -%}"
    "{%- for entity in device_entities(device_id(entity_id)) -%}"
    "{%- if entity.startswith('sensor.') and state_attr(entity, 'expires_at') is not none -%}"
    "{%- set ns.task_id = state_attr(entity, 'task_id') -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.task_id -%}"
    "{{ {'by': '" + BY + "', 'task_id': ns.task_id} | tojson }}"
    "{%- else -%}"
    "{{ 'Home Assistant shows no pending hold of this device, nothing was sent' | float }}"
    "{%- endif -%}"
)

PENDING_HOLDS = Entity(
    "pending_holds",
    "sensor",
    "Pending holds",
    {
        "state_class": "measurement",
        "unit_of_measurement": "holds",
        "value_template": "{{ value_json.get('held') }}",
        "icon": "mdi:hand-back-right",
    },
)
LATEST_HOLD = Entity(
    "latest_hold",
    "sensor",
    "Latest hold",
    {
        # The held action's name, "none" while nothing is pending (a text sensor shows a
        # rendered None as the text "None", measured on Home Assistant 2024.3).
        "value_template": "{{ (value_json.get('latest_hold') or {}).get('action') or 'none' }}",
        "json_attributes_template": _ATTRIBUTES,
        "icon": "mdi:hand-back-right-outline",
    },
)
CONFIRM_HOLD = Entity(
    "confirm_hold",
    "button",
    "Confirm hold",
    {"command_template": COMMAND_TEMPLATE, "icon": "mdi:check-circle-outline"},
    source=CONFIRM_SOURCE,
)
REJECT_HOLD = Entity(
    "reject_hold",
    "button",
    "Reject hold",
    {"command_template": COMMAND_TEMPLATE, "icon": "mdi:close-circle-outline"},
    source=REJECT_SOURCE,
)
HOLD_ENTITIES = (PENDING_HOLDS, LATEST_HOLD, CONFIRM_HOLD, REJECT_HOLD)


def button_topics(entity: Entity, topics: Topics) -> dict[str, Any]:
    """A button's command topic and availability: the device online *and* a hold pending
    (availability_mode all), both from retained topics, so a fresh HA knows at once."""
    return {
        "command_topic": f"{topics.base}/{entity.source}",
        "retain": False,
        "availability": [
            {
                "topic": topics.status,
                "payload_available": "online",
                "payload_not_available": "offline",
            },
            {
                "topic": topics.heartbeat,
                "value_template": "{{ 'online' if value_json.get('latest_hold') else 'offline' }}",
            },
        ],
        "availability_mode": "all",
    }
