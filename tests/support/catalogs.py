"""Action catalogs the tests share."""

from __future__ import annotations

from edgeagent.config import ActionConfig

CATALOG_TOML = """
[[actions]]
name = "set_irrigation"
description = "Open the irrigation valve of a zone for some minutes."
dispatch = true
schema = { type = "object", properties = { zone = { type = "integer", minimum = 1, maximum = 8 }, minutes = { type = "integer", minimum = 0, maximum = 120 } }, required = ["zone", "minutes"] }

[[actions]]
name = "notify"
description = "Send a short message to the operator."
schema = { type = "object", properties = { severity = { enum = ["info", "warning", "critical"] }, message = { type = "string", maxLength = 80 } }, required = ["severity", "message"] }

[[actions]]
name = "no_action"
description = "Nothing needs to be done."
schema = { type = "object", properties = {} }
"""


# A small catalog for engine and schema tests (the daemon tests use CATALOG_TOML).
GREENHOUSE_ACTIONS = [
    ActionConfig(
        name="open_vent",
        description="Open the greenhouse roof vent by a percentage.",
        schema={
            "type": "object",
            "properties": {"percent": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["percent"],
        },
    ),
    ActionConfig(
        name="notify",
        description="Send a short message to the operator.",
        schema={
            "type": "object",
            "properties": {
                "severity": {"enum": ["info", "warning", "critical"]},
                "message": {"type": "string", "minLength": 1, "maxLength": 60},
            },
            "required": ["severity", "message"],
        },
    ),
    ActionConfig(
        name="start_heater",
        description="Switch the heater on.",
        schema={"type": "object", "properties": {}},
    ),
]
