"""Hostile devices beside the live daemon, and the fleet view run on them while tasks are
fuzzed (tests/integration/test_hostile.py).

Each hostile device is an MQTT client of its own (its own client id) that retains a
status and a heartbeat under `edgeagent/<its id>/`, a new variant of support/heartbeats.py
at every round: escape sequences, C1 and bidi text, wrong types, deep or oversized JSON,
non-JSON bytes, a heartbeat that claims to be the real device. At each round the real CLI,
`edgeagent status --fleet` (table and `--json`), runs against the broker: it must exit 0,
never show a traceback, print no raw control or format character, show no injected row,
and list the real device online with the state of its own latest heartbeat.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.heartbeats import hostile_beats, retain, run_fleet_view
from support.hostile_live import Client, Seen

PREFIX = "edgeagent/"
# Bidi in an id too: the view escapes it where it shows the device.
DEVICES = ("pi-h0", "pi-h1", "pi-\u202eh2")


class HostileFleet:
    def __init__(self, port: int, config: Path, real_device: str) -> None:
        self.config = config
        self.real = real_device
        self.clients = {device: Client(port, f"hostile-{device}") for device in DEVICES}
        self.rounds = 0
        self.views: list[dict[str, Any]] = []  # per round: what the view showed
        self.problems: list[str] = []

    def owns(self, topic: str) -> bool:
        """Topics the hostile devices and the fleet view (its sync marker) publish on."""
        devices = tuple(f"{PREFIX}{d}/" for d in DEVICES)
        return topic.startswith(devices) or (
            topic.startswith(PREFIX + "clients/") and topic.endswith("/sync")
        )

    def publish_round(self) -> None:
        """Every device retains the next variant of its status and heartbeat."""
        for offset, (device, client) in enumerate(self.clients.items()):
            variants = list(hostile_beats(device, self.rounds))
            status, heartbeat = variants[(self.rounds + offset) % len(variants)]

            def publish(topic: str, payload: Any, client: Client = client) -> None:
                body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
                client.client.publish(topic, body, qos=1, retain=True).wait_for_publish(10)

            retain(publish, device, status, heartbeat)
        self.rounds += 1

    def check_view(self, real_states: Callable[[], list[str]]) -> None:
        """A round: new hostile heartbeats, then the fleet view, table and JSON.
        `real_states()`: the states of the real device's heartbeats seen so far."""
        self.publish_round()
        before = real_states()
        table = run_fleet_view(self.config, check=False, timeout=120)
        listing = run_fleet_view(self.config, "--json", check=False, timeout=120)
        # Its latest heartbeat before the view, or one that came while the view ran.
        states = {*before[-1:], *real_states()[len(before) :]}
        problems = []
        for name, result in (("table", table), ("--json", listing)):
            unprintable = {c for c in result.stdout if not c.isprintable() and c != "\n"}
            if result.returncode != 0 or "Traceback" in result.stderr or unprintable:
                problems.append(
                    f"fleet view {name}: exit {result.returncode}, raw {unprintable},"
                    f" stderr {result.stderr[-500:]!r}"
                )
        try:
            rows = {r["device"]: r for r in json.loads(listing.stdout)}
        except (ValueError, TypeError, KeyError):
            rows = {}
        real = rows.get(self.real, {})
        if not (real.get("online") is True and real.get("state") in states):
            problems.append(f"fleet view: the real device as {real}, its states {states}")
        if len(rows) != 1 + len(DEVICES):
            problems.append(f"fleet view --json: {sorted(rows)}")
        lines = table.stdout.splitlines()
        if len(lines) != 2 + len(DEVICES) or not any(
            line.split()[:1] == [self.real] for line in lines
        ):
            problems.append(f"fleet view table: {table.stdout[:2000]!r}")
        self.problems += [f"round {self.rounds}: {p}" for p in problems]
        self.views.append({"round": self.rounds, "real": real, "devices": sorted(rows)})

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def heartbeat_states(seen: list[Seen], device: str) -> list[str]:
    """The states of a device's heartbeats, in the order the watcher saw them."""
    topic = f"{PREFIX}{device}/heartbeat"
    return [
        str(body.get("state"))
        for m in seen
        if m.topic == topic and isinstance(body := m.body(), dict)
    ]
