# ruff: noqa: INP001 - an Ansible filter plugin, loaded by Ansible from this directory
"""Jinja filters for the broker side of the role (tasks/broker.yml, tasks/validate.yml).

``mosquitto_password_hash(password, existing="")`` returns a mosquitto 2.x password-file
hash (``$7$ITERATIONS$SALT$HASH``, PBKDF2-HMAC-SHA512, what ``mosquitto_passwd`` writes).
When ``existing`` is a hash of the same password it is returned unchanged, so re-running
the playbook leaves the password file alone (``changed=0``); otherwise a new random salt
is used.

``edgeagent_device_id_problem(device_id)`` says why a device id cannot be one (empty when
it can): the ACL grants a device ``<prefix>/<device id>/#``, so an id that is a level the
fleet itself uses (``fleet``: the fleet's task topic, ``clients``: the CLI's own topics)
would hand that branch to the device.

``edgeagent_broker_problems(devices, clients)`` lists what makes an inventory unsafe to
render an ACL for (two entries sharing a name, a reserved or unsafe device id).

``edgeagent_maximum_packet_size(device)`` is the MQTT v5 Maximum Packet Size a device's
daemon asks for; the listener's ``max_packet_size`` is the smallest of them.

``mosquitto_discovery_topics(prefix, device_id)`` is every Home Assistant discovery
config topic the daemon publishes for a device (``edgeagent.service.views.homeassistant``; a
unit test keeps the two in step): the ACL grants exactly these, so a device cannot
create an entity of another component (a ``switch`` or ``button`` with a
``command_topic`` pointed at another device's tasks) or under another device's node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import Any

ITERATIONS = 10000  # mosquitto_passwd's default is 101; the broker reads it from each entry
SALT_BYTES = 12


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)


def _matches(password: str, existing: str) -> bool:
    parts = existing.strip().split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error):
        return False
    if not 1 <= iterations <= 10_000_000:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), digest)


def mosquitto_password_hash(password: str, existing: str = "") -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("mosquitto_password_hash needs a non-empty password")
    if existing and _matches(password, existing):
        return existing.strip()
    salt = os.urandom(SALT_BYTES)
    digest = _pbkdf2(password, salt, ITERATIONS)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return "$".join(["", "7", str(ITERATIONS), *encoded])


# Second topic levels under the fleet's prefix that are not a device's (the daemon's own
# copy, which refuses them in its config: edgeagent/protocol/topics.py).
RESERVED_DEVICE_IDS = ("fleet", "clients")
# MQTT separators and wildcards, whitespace (the ACL file is line- and space-separated),
# control characters, '$' first (broker topics).
_UNSAFE_DEVICE_ID = re.compile(r"[/#+\s\x00-\x1f\x7f-\x9f]|^\$")
# Home Assistant node and object ids are [a-zA-Z0-9_-].
_UNSAFE_NODE_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
# (component, object id) of every entity the daemon can publish, soc_temperature included.
DISCOVERY_ENTITIES = (
    ("sensor", "state"),
    ("binary_sensor", "memory_pressure"),
    ("sensor", "queue_depth"),
    ("sensor", "tasks_done"),
    ("sensor", "tasks_failed"),
    ("sensor", "tokens_per_second"),
    ("sensor", "context_budget"),
    ("sensor", "memory_available"),
    ("sensor", "last_action"),
    ("sensor", "last_action_time"),
    ("sensor", "soc_temperature"),
)


def edgeagent_device_id_problem(device_id: object) -> str:
    text = str(device_id)
    if not text:
        return "a device id must not be empty"
    if text in RESERVED_DEVICE_IDS:
        return (
            f"device id {text!r} is reserved: <prefix>/{text}/ is the fleet's own topic"
            f" branch, not a device's (reserved: {', '.join(RESERVED_DEVICE_IDS)})"
        )
    if _UNSAFE_DEVICE_ID.search(text):
        return (
            f"device id {text!r} must be one MQTT topic level without '/', '+', '#',"
            " whitespace or control characters, and must not start with '$'"
        )
    return ""


def edgeagent_broker_problems(
    devices: list[dict[str, object]], clients: list[dict[str, object]]
) -> list[str]:
    problems = [p for d in devices if (p := edgeagent_device_id_problem(d["device"]))]
    owners: dict[str, str] = {}  # a device id, user or client name -> whose it is
    entries = [(f"host {d['host']}", {str(d["device"]), str(d["user"])}) for d in devices]
    entries += [(f"client {c['name']}", {str(c["name"])}) for c in clients]
    for owner, names in entries:
        for name in sorted(names):
            if name in owners:
                problems.append(f"{name!r} names both {owners[name]} and {owner}")
            owners.setdefault(name, owner)
    return problems


def mosquitto_discovery_topics(prefix: str, device_id: str) -> list[str]:
    safe = _UNSAFE_NODE_CHAR.sub("_", device_id)
    if safe != device_id:
        safe += "_" + hashlib.sha256(device_id.encode()).hexdigest()[:6]
    return [
        f"{prefix}/{component}/edgeagent_{safe}/{key}/config"
        for component, key in DISCOVERY_ENTITIES
    ]


# [mqtt] defaults of edgeagent.config and edgeagent.mqtt.link's PACKET_HEADROOM_BYTES (a
# unit test keeps them equal).
DEFAULT_MAX_PAYLOAD_BYTES = 262144
DEFAULT_REPLY_TOPIC_MAX_BYTES = 256
PACKET_HEADROOM_BYTES = 8192


def edgeagent_maximum_packet_size(device: dict[str, Any]) -> int:
    """The MQTT v5 Maximum Packet Size the device's daemon puts in its CONNECT
    (edgeagent.mqtt.link.maximum_packet_size), from what the broker play knows of it."""
    mqtt = device.get("mqtt_overrides") or {}
    topics = [f"{device['prefix']}/{device['device']}/tasks"]
    if device.get("fleet") and device.get("shared_group"):
        topics.append(f"$share/{device['shared_group']}/{device['prefix']}/fleet/tasks")
    longest = max(len(t.encode()) for t in topics)
    payload = int(mqtt.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES))
    reply = int(mqtt.get("reply_topic_max_bytes", DEFAULT_REPLY_TOPIC_MAX_BYTES))
    return payload + longest + reply + PACKET_HEADROOM_BYTES


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {
            "mosquitto_password_hash": mosquitto_password_hash,
            "mosquitto_discovery_topics": mosquitto_discovery_topics,
            "edgeagent_device_id_problem": edgeagent_device_id_problem,
            "edgeagent_broker_problems": edgeagent_broker_problems,
            "edgeagent_maximum_packet_size": edgeagent_maximum_packet_size,
        }
