"""The tasks `edgeagent bench` measures throughput with (bench_throughput.py).

* four action catalogs whose fixed prompt part (system message, catalog with few-shot
  examples, template) is about 1,000 tokens — what a catalog with examples looks like;
* extraction tasks whose answers copy spans of their input (log lines);
* classification tasks whose answers copy nothing (speculation finds no match).
"""

from __future__ import annotations

from typing import Any

from edgeagent.config import ActionConfig
from edgeagent.inference.contract import OutputSpec, action_spec, schema_spec

_DOMAINS = {
    "greenhouse": ("zone", ["irrigate", "vent", "shade", "alert"]),
    "home": ("room", ["lights", "heating", "lock", "notify"]),
    "factory": ("line", ["stop", "inspect", "restock", "page"]),
    "logs": ("host", ["restart", "rotate", "ticket", "escalate"]),
}
_WHAT = (
    "Use it when the report says so plainly, not on a guess. It takes effect at once and is "
    "logged with the reason given, so say why in the note. Never combine it with another "
    "action in one answer; the operator decides what follows."
)


def catalog(domain: str) -> list[ActionConfig]:
    """Four actions, each with a description and two worked examples (few-shot): a fixed
    prompt part of about 1,000 tokens with the system message and the template."""
    place, verbs = _DOMAINS[domain]
    actions = []
    for verb in verbs:
        examples = " ".join(
            f'Example {n}: "{place} {n + 2} reports {verb} needed, level {4 * n}" -> '
            f'{{"action": "{domain}_{verb}", "args": {{"{place}": {n + 2}, "level": {4 * n}, '
            f'"note": "{verb} requested for {place} {n + 2}"}}}}.'
            for n in (1, 2)
        )
        actions.append(
            ActionConfig(
                name=f"{domain}_{verb}",
                description=f"{verb.capitalize()} for one {place}. {_WHAT} {examples}",
                schema={
                    "type": "object",
                    "properties": {
                        place: {"type": "integer", "minimum": 1, "maximum": 12},
                        "level": {"type": "integer", "minimum": 0, "maximum": 10},
                        "note": {"type": "string", "maxLength": 60},
                    },
                    "required": [place, "level", "note"],
                },
            )
        )
    return actions


CATALOGS: dict[str, OutputSpec] = {name: action_spec(catalog(name)) for name in _DOMAINS}
CATALOG_INPUTS = [
    "Unit 3 reports the level is far too high, do something now.",
    "Number 5 has been quiet all day; the operator wants it checked.",
    "Unit 2: readings are normal again after the maintenance.",
    "Unit 7 is down since 04:10 and nobody answered the first alarm.",
]

EXTRACT = schema_spec(
    {
        "type": "object",
        "properties": {
            "host": {"type": "string", "maxLength": 40},
            "service": {"type": "string", "maxLength": 40},
            "message": {"type": "string", "maxLength": 200},
        },
        "required": ["host", "service", "message"],
    }
)
EXTRACT_INPUTS = [
    (
        "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71; "
        "retrying in 500 ms (port 3, hub 1-1, speed high)"
    ),
    (
        "Nov 30 08:15:02 broker-1 mosquitto[812]: Client greenhouse-02 has exceeded timeout, "
        "disconnecting."
    ),
    (
        "Dec 01 23:02:44 gw-3 sshd[2201]: Failed password for invalid user admin from "
        "203.0.113.7 port 52144 ssh2"
    ),
    (
        "Dec 02 06:30:00 pi-12 edgeagent[431]: memory budget 512 tokens is below min_ctx 768; "
        "pausing until memory recovers"
    ),
    (
        "Dec 02 11:47:19 nas-1 smartd[655]: Device /dev/sda [SAT], 8 Currently unreadable "
        "(pending) sectors"
    ),
    "Dec 03 02:13:55 pi-04 systemd[1]: edgeagent.service: Watchdog timeout (limit 30s)!",
    "Dec 03 14:20:08 cam-2 motion[990]: camera 1 lost connection to rtsp://10.0.4.2:554/live",
    "Dec 04 09:05:31 pi-09 kernel: Under-voltage detected! (0x00050005)",
]

CLASSIFY = schema_spec(
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "warning", "critical"]},
            "level": {"type": "integer", "minimum": 0, "maximum": 10},
            "urgent": {"type": "boolean"},
        },
        "required": ["status", "level", "urgent"],
    }
)
CLASSIFY_INPUTS = [
    "The soil is bone dry and the plants hang their leaves since this morning.",
    "Everything looks fine, the fans hum along and the readings are steady.",
    "Smoke was seen near the pump house a few minutes ago.",
    "The tank is half full; refill it some time this week.",
]


def describe() -> dict[str, Any]:
    return {
        "catalogs": {name: len(spec.allowed_actions) for name, spec in CATALOGS.items()},
        "extract_inputs": len(EXTRACT_INPUTS),
        "classify_inputs": len(CLASSIFY_INPUTS),
    }
