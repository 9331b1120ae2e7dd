"""The entities of an edgeagent device in Home Assistant, each fed by a retained topic.

homeassistant.py turns them into discovery configs; the hold entities (a pending count,
the latest hold, Confirm and Reject buttons) are in homeassistant_holds.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The daemon's lifecycle states (service.daemon.State), the options of the enum sensor.
STATES = ("starting", "loading", "serving", "paused", "draining", "stopped")


@dataclass(frozen=True, slots=True)
class Entity:
    """One HA entity: its object id, component, display name and the component's options."""

    key: str
    component: str  # "sensor", "binary_sensor" or "button"
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # A sensor: which of the device's retained topics it reads (BEAT, LAST_ACTION). A
    # button: its command topic below the device's base (homeassistant_holds).
    source: str = "heartbeat"


BEAT = "heartbeat"
LAST_ACTION = "last_action"
ENTITIES: tuple[Entity, ...] = (
    Entity(
        "state",
        "sensor",
        "State",
        {
            "device_class": "enum",
            "options": list(STATES),
            "value_template": "{{ value_json.state }}",
            "icon": "mdi:robot",
        },
    ),
    Entity(
        "memory_pressure",
        "binary_sensor",
        "Memory pressure",
        {
            # On while the memory governor pauses the daemon (tasks get BUSY).
            "device_class": "problem",
            "value_template": "{{ 'ON' if value_json.state == 'paused' else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        },
    ),
    Entity(
        "queue_depth",
        "sensor",
        "Queue depth",
        {
            "state_class": "measurement",
            "unit_of_measurement": "tasks",
            "value_template": "{{ value_json.queue.depth }}",
            "icon": "mdi:tray-full",
        },
    ),
    Entity(
        "tasks_done",
        "sensor",
        "Tasks done",
        {
            # Counters start at 0 with each daemon start: total_increasing treats a drop
            # as a reset, which is exactly that.
            "state_class": "total_increasing",
            "value_template": "{{ value_json.tasks.done }}",
            "icon": "mdi:check-circle-outline",
        },
    ),
    Entity(
        "tasks_failed",
        "sensor",
        "Tasks failed",
        {
            "state_class": "total_increasing",
            "value_template": "{{ value_json.tasks.failed }}",
            "icon": "mdi:alert-circle-outline",
        },
    ),
    Entity(
        "tokens_per_second",
        "sensor",
        "Tokens per second",
        {
            # null before the first task: rendered "None", which HA shows as unknown.
            "state_class": "measurement",
            "unit_of_measurement": "tok/s",
            "suggested_display_precision": 1,
            "value_template": "{{ value_json.tokens_per_s }}",
            "icon": "mdi:speedometer",
        },
    ),
    Entity(
        "context_budget",
        "sensor",
        "Context budget",
        {
            "state_class": "measurement",
            "unit_of_measurement": "tokens",
            # The governor's fields are absent until its first reading. Every template
            # reads optional keys with .get(): HA logs a warning for each heartbeat in
            # which a template touches a missing key (the .get() renders None: unknown).
            "value_template": "{{ value_json.get('context', {}).get('budget') }}",
            "icon": "mdi:memory",
        },
    ),
    Entity(
        "memory_available",
        "sensor",
        "Memory available",
        {
            "device_class": "data_size",
            "state_class": "measurement",
            "unit_of_measurement": "MiB",
            "suggested_display_precision": 0,
            # The governor's reading is the tighter of host and cgroup memory.
            "value_template": (
                "{{ value_json.get('context', {}).get('available_mb',"
                " value_json.get('memory', {}).get('host_available_mb')) }}"
            ),
            "entity_category": "diagnostic",
        },
    ),
    Entity(
        "last_action",
        "sensor",
        "Last action",
        {
            "value_template": "{{ value_json.name }}",
            "json_attributes_template": "{{ value_json | tojson }}",
            "icon": "mdi:gesture-tap",
        },
        source=LAST_ACTION,
    ),
    Entity(
        "last_action_time",
        "sensor",
        "Last action time",
        {"device_class": "timestamp", "value_template": "{{ value_json.at }}"},
        source=LAST_ACTION,
    ),
)
TEMPERATURE = Entity(
    "soc_temperature",
    "sensor",
    "SoC temperature",
    {
        "device_class": "temperature",
        "state_class": "measurement",
        "unit_of_measurement": "°C",
        "suggested_display_precision": 1,
        # service/system/board.py's reading; this entity exists only where it knows the
        # temperature, and a heartbeat leaves `board` out when it has nothing to say.
        "value_template": "{{ value_json.get('board', {}).get('temp_c') }}",
        "entity_category": "diagnostic",
    },
)
