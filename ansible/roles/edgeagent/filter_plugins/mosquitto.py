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

``edgeagent_broker_problems(devices, clients, operators=[])`` lists what makes an
inventory unsafe to render an ACL for (two entries sharing a name, a reserved or unsafe
device id, a client whose write grant covers a hold's confirm or reject topic).

``edgeagent_device_acl(device)`` and ``edgeagent_operator_acl(operator, devices)`` are the
ACL lines of one device and of one operator (templates/mosquitto-acl.conf.j2): a device
writes exactly the topics its daemon publishes below its own base and reads its tasks and
the confirm/reject messages of its holds, never writes them; an operator confirms and
rejects every device's holds and reads what it needs to decide.

``edgeagent_maximum_packet_size(device)`` is the MQTT v5 Maximum Packet Size a device's
daemon asks for; the listener's ``max_packet_size`` is the smallest of them.

``mosquitto_discovery_topics(prefix, device_id)`` is every Home Assistant discovery
config topic the daemon publishes for a device (``edgeagent.service.views.homeassistant``; a
unit test keeps the two in step): the ACL grants exactly these, so a device cannot
create an entity of another component (a ``switch`` with a ``command_topic`` pointed at
another device's tasks), another button than its two hold buttons, or anything under
another device's node. What those two may command is checked by the daemon's side of the
test: their command topic is the device's own ``held/latest/confirm|reject``.
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
    ("sensor", "pending_holds"),
    ("sensor", "latest_hold"),
    # The hold buttons command <prefix>/<device>/held/latest/confirm|reject of their own
    # device: the device grants itself nothing there, an operator presses them.
    ("button", "confirm_hold"),
    ("button", "reject_hold"),
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
    devices: list[dict[str, Any]],
    clients: list[dict[str, Any]],
    operators: list[dict[str, Any]] | None = None,
) -> list[str]:
    operators = operators or []
    problems = [p for d in devices if (p := edgeagent_device_id_problem(d["device"]))]
    owners: dict[str, str] = {}  # a device id, user, client or operator name -> whose it is
    entries = [(f"host {d['host']}", {str(d["device"]), str(d["user"])}) for d in devices]
    entries += [(f"client {c['name']}", {str(c["name"])}) for c in clients]
    entries += [(f"operator {o['name']}", {str(o["name"])}) for o in operators]
    for owner, names in entries:
        for name in sorted(names):
            if name in owners:
                problems.append(f"{name!r} names both {owners[name]} and {owner}")
            owners.setdefault(name, owner)
    problems += _hold_decision_grants(devices, clients)
    return problems


# What an operator publishes to decide on a hold, below <prefix>/<device>/.
HOLD_DECISIONS = ("held/+/confirm", "held/+/reject")


def filters_overlap(first: str, second: str) -> bool:
    """True when some topic matches both MQTT topic filters (level by level: '#' matches
    the rest, the level above included; '+' any one level; anything else itself)."""
    a, b = first.split("/"), second.split("/")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if "#" in (x, y):
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


def _hold_decision_grants(
    devices: list[dict[str, Any]], clients: list[dict[str, Any]]
) -> list[str]:
    """A task sender that may confirm holds would approve its own tasks' held actions:
    only an operator (edgeagent_broker_operators) may publish there."""
    decisions = sorted(
        {f"{d['prefix']}/+/{decision}" for d in devices for decision in HOLD_DECISIONS}
    )
    problems = []
    for client in clients:
        grants = [*(client.get("write") or []), *(client.get("readwrite") or [])]
        for grant in grants:
            covered = [t for t in decisions if filters_overlap(str(grant), t)]
            if covered:
                problems.append(
                    f"client {client['name']}: write grant {grant!r} covers {covered[0]}"
                    " (confirming or rejecting held actions is for edgeagent_broker_operators)"
                )
    return problems


def edgeagent_device_acl(device: dict[str, Any]) -> list[str]:
    """The ACL lines of one device (after its `user` line)."""
    base = f"{device['prefix']}/{device['device']}"
    lines = [f"topic read {base}/tasks"]
    if device.get("fleet"):
        lines.append(f"topic read {device['prefix']}/fleet/tasks")
    lines += [
        # Retained, read back by the rollout's health gate with the device's credentials.
        f"topic readwrite {base}/status",
        f"topic readwrite {base}/heartbeat",
        f"topic write {base}/errors",
        f"topic write {base}/results/#",
        f"topic write {base}/actions/#",
        f"topic write {base}/last_action",
        # Its pending holds (retained, one level: never held/<id>/confirm or /reject),
        # and the operators' decisions on them, which it only reads.
        f"topic readwrite {base}/held/+",
        *(f"topic read {base}/{decision}" for decision in HOLD_DECISIONS),
    ]
    for reply in device["reply_prefixes"]:
        lines += [
            f"topic write {reply}/+/{device['device']}/#",
            f"topic readwrite {reply}/{device['user']}/#",
        ]
    return lines


def edgeagent_operator_acl(operator: dict[str, Any], devices: list[dict[str, Any]]) -> list[str]:
    """The ACL lines of one operator (after its `user` line), for every device prefix."""
    lines = []
    for prefix in sorted({str(d["prefix"]) for d in devices}):
        lines += [f"topic write {prefix}/+/{decision}" for decision in HOLD_DECISIONS]
        lines += [
            f"topic read {prefix}/+/held/#",
            f"topic read {prefix}/+/heartbeat",
            f"topic read {prefix}/+/status",
            # The CLI's sync marker (edgeagent held, status --fleet).
            f"topic readwrite {prefix}/clients/+/sync",
        ]
    replies = sorted({str(r) for d in devices for r in d["reply_prefixes"]})
    # The devices' answers to its decisions (MQTT v5 response topic in its own branch).
    lines += [f"topic read {reply}/{operator['name']}/#" for reply in replies]
    for access in ("read", "write", "readwrite"):
        lines += [f"topic {access} {topic}" for topic in operator.get(access) or []]
    return lines


def mosquitto_discovery_topics(prefix: str, device_id: str) -> list[str]:
    safe = _UNSAFE_NODE_CHAR.sub("_", device_id)
    if safe != device_id:
        safe += "_" + hashlib.sha256(device_id.encode()).hexdigest()[:6]
    return [
        f"{prefix}/{component}/edgeagent_{safe}/{key}/config"
        for component, key in DISCOVERY_ENTITIES
    ]


# [mqtt] defaults of edgeagent.config and edgeagent.mqtt.limits' PACKET_HEADROOM_BYTES (a
# unit test keeps them equal).
DEFAULT_MAX_PAYLOAD_BYTES = 262144
DEFAULT_REPLY_TOPIC_MAX_BYTES = 256
PACKET_HEADROOM_BYTES = 8192


def edgeagent_maximum_packet_size(device: dict[str, Any]) -> int:
    """The MQTT v5 Maximum Packet Size the device's daemon puts in its CONNECT
    (edgeagent.mqtt.limits.maximum_packet_size), from what the broker play knows of it."""
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
            "edgeagent_device_acl": edgeagent_device_acl,
            "edgeagent_operator_acl": edgeagent_operator_acl,
        }
