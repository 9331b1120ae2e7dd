# ruff: noqa: INP001 - an Ansible filter plugin, loaded by Ansible from this directory
"""Jinja filters for sites: a site's mosquitto bridged to a central broker (docs/deploy.md).

A site's devices use the topic prefix ``<fleet prefix>/<site>`` (``edgeagent/site-a``),
so every topic has one name on the site broker and on the central one: nothing is
renamed on the way up, and the topics that payloads carry (Home Assistant discovery's
state topics, a held action's ``held.topic``, a results topic) stay true centrally.
Only the fleet-wide task topic is renamed: ``<fleet prefix>/fleet/tasks`` on the central
broker arrives as ``<fleet prefix>/<site>/fleet/tasks`` at every site, where the site's
shared subscription gives it to one of its devices.

``edgeagent_bridge_settings(bridge)`` completes ``edgeagent_broker_bridge`` with its
defaults; ``edgeagent_bridge_problems(bridge, devices)`` says what makes it unsafe to
render; ``edgeagent_bridge_topics(bridge, devices)`` is every ``topic`` line of the
site's bridge; ``edgeagent_bridge_clients(sites, ...)`` is the central broker's
``edgeagent_broker_clients`` entry of each site's bridge user, granting exactly what those
lines carry (the same function makes both, so they cannot drift apart).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

# Reuse the discovery topics of the ACL filters (one list for the ACL, the bridge and
# the daemon; a unit test holds the daemon to it).
_SPEC = importlib.util.spec_from_file_location(
    "edgeagent_mosquitto_filters", Path(__file__).with_name("mosquitto.py")
)
assert _SPEC is not None
assert _SPEC.loader is not None
_MOSQUITTO = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MOSQUITTO)

# A site is one topic level; the fleet's own levels cannot be one (the central broker's
# <prefix>/fleet/tasks is the fleet-wide task topic, <prefix>/clients/ the CLI's own).
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_SITES = _MOSQUITTO.RESERVED_DEVICE_IDS
# Where the bridge reports its own link (1 up, 0 down: its Last Will on the central
# broker), under the site's reserved `fleet` level so no device can own it.
NOTIFICATION_LEAF = "fleet/bridge"


def edgeagent_bridge_settings(bridge: dict[str, Any]) -> dict[str, Any]:
    site = str(bridge.get("site", ""))
    tls = bool(bridge.get("cafile"))
    settings: dict[str, Any] = {
        "site": site,
        "prefix": str(bridge.get("prefix", "edgeagent")),
        "address": str(bridge.get("address", "")),
        "port": int(bridge.get("port", 8883 if tls else 1883)),
        "name": str(bridge.get("name", f"edgeagent-{site}")),
        "username": str(bridge.get("username", f"bridge-{site}")),
        "password": str(bridge.get("password", "")),
        "cafile": str(bridge.get("cafile", "")),
        "certfile": str(bridge.get("certfile", "")),
        "keyfile": str(bridge.get("keyfile", "")),
        "homeassistant_prefix": str(bridge.get("homeassistant_prefix", "")),
        "restart_timeout": str(bridge.get("restart_timeout", "5 60")),
        "keepalive_s": int(bridge.get("keepalive_s", 60)),
        # MQTT 3.1.1: mosquitto 2.0 (Debian 12) keeps a 3.1.1 bridge's session on the
        # central broker across a cut, but ends a v5 bridge's at once (no session expiry
        # before mosquitto 2.1's bridge_session_expiry_interval): tasks sent during a cut
        # would be lost. The price: v5 properties (Response Topic) do not cross; callers
        # on the central broker name their reply address with `reply_to`.
        "protocol": str(bridge.get("protocol", "mqttv311")),
        "session_expiry_s": int(bridge.get("session_expiry_s", 86400)),
    }
    settings["clientid"] = str(bridge.get("clientid", settings["username"]))
    settings["notification_topic"] = f"{settings['prefix']}/{site}/{NOTIFICATION_LEAF}"
    return settings


def edgeagent_bridge_problems(bridge: dict[str, Any], devices: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a site's bridge settings and its devices' topic prefixes."""
    known = set(edgeagent_bridge_settings({}))
    settings = edgeagent_bridge_settings(bridge)
    problems = [f"unknown setting {key!r}" for key in sorted(set(bridge) - known)]
    site = settings["site"]
    if not _SITE.fullmatch(site) or site in RESERVED_SITES:
        problems.append(
            f"site {site!r} must be one topic level of letters, digits, '.', '_', '-'"
            f" (at most 64, not {', '.join(RESERVED_SITES)})"
        )
    # mosquitto's configuration splits values at whitespace.
    problems.extend(
        f"{key} must not contain whitespace"
        for key in ("address", "username", "password", "cafile", "certfile", "keyfile")
        if re.search(r"\s", settings[key])
    )
    if not settings["address"]:
        problems.append("address (the central broker) is required")
    if settings["protocol"] not in ("mqttv311", "mqttv50"):
        problems.append(f"protocol {settings['protocol']!r} is not mqttv311 or mqttv50")
    if bool(settings["certfile"]) != bool(settings["keyfile"]):
        problems.append("certfile and keyfile go together")
    if settings["certfile"] and not settings["cafile"]:
        problems.append("a client certificate needs cafile (TLS)")
    site_prefix = f"{settings['prefix']}/{site}"
    problems.extend(
        f"device {device['device']} (host {device.get('host', '?')}) has topic prefix"
        f" {device['prefix']!r}; the devices of site {site!r} need {site_prefix!r}"
        " (edgeagent_mqtt_topic_prefix)"
        for device in devices
        if device["prefix"] != site_prefix
    )
    return problems


def _line(pattern: str, direction: str, qos: int, local: str = "", remote: str = "") -> dict:
    return {
        "pattern": pattern,
        "direction": direction,
        "qos": qos,
        "local": local,
        "remote": remote,
    }


def edgeagent_bridge_topics(
    bridge: dict[str, Any], devices: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The bridge's topic lines: pattern, direction (in: central -> site), qos, prefixes.

    `devices` are the site's devices: {"device": id, "reply_prefixes": [...]}.
    """
    settings = edgeagent_bridge_settings(bridge)
    site = f"{settings['prefix']}/{settings['site']}/"
    lines = [
        # Up, unchanged. Status and last_action are retained and rare: QoS 1, queued while
        # the link is down. Heartbeats come every few seconds and the next one says it
        # all: QoS 0, so a long cut does not fill the bridge's queue with them.
        _line("+/status", "out", 1, site, site),
        _line("+/heartbeat", "out", 0, site, site),
        _line("+/last_action", "out", 1, site, site),
        _line("+/errors", "out", 1, site, site),
        _line("+/results/#", "out", 1, site, site),
        _line("+/actions/#", "out", 1, site, site),
        # Pending holds (retained; cleared by an empty message when resolved), for the
        # operators on the central broker; their decisions come down.
        _line("+/held/+", "out", 1, site, site),
        *(_line(f"+/{decision}", "in", 1, site, site) for decision in _MOSQUITTO.HOLD_DECISIONS),
        # Down: tasks for one device, and `fleet/tasks` (the `+`) for one device of the site.
        _line("+/tasks", "in", 1, site, site),
        # Down, renamed: the fleet-wide task topic to this site's fleet task topic.
        _line("fleet/tasks", "in", 1, site, f"{settings['prefix']}/"),
    ]
    for device in devices:
        # Replies naming the device, as the site's ACL lets it write them.
        lines.extend(
            _line(f"{reply}/+/{device['device']}/#", "out", 1)
            for reply in device.get("reply_prefixes", ["replies"])
        )
        if settings["homeassistant_prefix"]:
            discovery = _MOSQUITTO.mosquitto_discovery_topics(
                settings["homeassistant_prefix"], str(device["device"])
            )
            lines.extend(_line(topic, "out", 1) for topic in discovery)
    return lines


def edgeagent_bridge_clients(
    sites: list[dict[str, Any]],
    prefix: str = "edgeagent",
    reply_prefixes: list[str] | None = None,
    homeassistant_prefix: str = "",
) -> list[dict[str, Any]]:
    """The central broker's user of each site's bridge (edgeagent_broker_clients entries).

    `sites`: {"site", "password", "devices": [device ids], optional "username"}. It reads
    the site's task topics and the fleet-wide one, and writes exactly what the site's
    bridge carries up: its devices' topics, their replies and discovery configs, its link
    state. Refuses a device id used by two sites (replies and Home Assistant entities are
    told apart by device id alone) and a site named twice.
    """
    problems: list[str] = []
    owner: dict[str, str] = {}  # device id -> the site it belongs to
    named: set[str] = set()
    clients = []
    for entry in sites:
        bridge = {"site": entry["site"], "prefix": prefix, "address": "central"}
        if "username" in entry:
            bridge["username"] = entry["username"]
        if homeassistant_prefix:
            bridge["homeassistant_prefix"] = homeassistant_prefix
        settings = edgeagent_bridge_settings(bridge)
        problems += edgeagent_bridge_problems(bridge, [])
        if settings["site"] in named:
            problems.append(f"site {settings['site']!r} is listed twice")
        named.add(settings["site"])
        for device in map(str, entry.get("devices", [])):
            if device in owner:
                problems.append(
                    f"device id {device!r} is in {owner[device]} and site {settings['site']}"
                )
            owner.setdefault(device, f"site {settings['site']}")
        devices = [
            {"device": d, "reply_prefixes": reply_prefixes or ["replies"]}
            for d in map(str, entry.get("devices", []))
        ]
        lines = edgeagent_bridge_topics(bridge, devices)
        clients.append(
            {
                "name": settings["username"],
                "password": entry["password"],
                "description": f"the bridge of site {settings['site']}",
                "read": [f"{x['remote']}{x['pattern']}" for x in lines if x["direction"] == "in"],
                "write": [f"{x['remote']}{x['pattern']}" for x in lines if x["direction"] == "out"]
                + [settings["notification_topic"]],
            }
        )
    if problems:
        raise ValueError("sites cannot be bridged: " + "; ".join(problems))
    return clients


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {
            "edgeagent_bridge_settings": edgeagent_bridge_settings,
            "edgeagent_bridge_problems": edgeagent_bridge_problems,
            "edgeagent_bridge_topics": edgeagent_bridge_topics,
            "edgeagent_bridge_clients": edgeagent_bridge_clients,
        }
