"""`edgeagent status --fleet`: every device under the topic prefix, one row each.

Every daemon keeps a retained `status` (online/offline, the last will says offline when
it dies) and a retained JSON heartbeat under `<prefix>/<device>/`, so one subscription
to `<prefix>/+/status` and `<prefix>/+/heartbeat` shows the whole fleet at once. On a
central broker of sites (docs/deploy.md, "Sites") a site's devices live one level deeper,
under `<prefix>/<site>/`: they are read as well and shown as `<site>/<device>`.
(cli/retained_watch.py knows when all retained messages have arrived; cli/fleet_rows.py
turns them into rows, sorted and filtered.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from edgeagent.cli.fleet_heartbeat import read_heartbeat
from edgeagent.cli.fleet_rows import (
    EVERY_DEVICE,
    Row,
    Seen,
    Selection,
    make_row,
    make_rows,
    render_table,
    rows_json,
)
from edgeagent.cli.retained_watch import RetainedWatch
from edgeagent.config import Config

# Only "online" and "offline" are statuses; anything longer is not worth reading.
MAX_STATUS_BYTES = 64
# Levels below a device where a caller or the catalog names the next level
# (`results/<task id>`, `actions/<name>`): `<prefix>/<device>/results/status` is a reply,
# not a site's device.
NOT_A_SITE_DEVICE = frozenset({"results", "actions"})
# Devices the view keeps at most: anyone can publish under the prefix, and the view's
# memory must not grow with what they publish (a real device costs ~1 KiB here).
MAX_DEVICES = 10_000
# The view's rows and their order live in fleet_rows; these names are also the view's.
__all__ = [
    "MAX_DEVICES",
    "FleetWatch",
    "Row",
    "Seen",
    "Selection",
    "device_key_ok",
    "make_row",
    "make_rows",
    "render_table",
    "rows_json",
    "run",
]


class FleetWatch(RetainedWatch):
    """A subscription to every device's retained status and heartbeat."""

    def __init__(
        self,
        cfg: Config,
        *,
        selection: Selection = EVERY_DEVICE,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        prefix = cfg.mqtt.topic_prefix
        filters = [f"{prefix}/+/status", f"{prefix}/+/heartbeat"]
        filters += [f"{prefix}/+/+/status", f"{prefix}/+/+/heartbeat"]  # sites
        super().__init__(cfg, filters, name="fleet")
        self.selection = selection
        self.max_devices = max_devices
        self.seen: dict[str, Seen] = {}
        self.ignored = 0  # messages of devices beyond max_devices

    def snapshot(self) -> dict[str, Seen]:
        with self.lock:
            return dict(self.seen)

    def handle(self, topic: str, payload: bytes) -> bool:
        device, _, kind = topic[len(self.prefix) + 1 :].rpartition("/")
        if not device_key_ok(device) or not self.selection.wants_device(device):
            return False  # left out before anything is parsed or kept
        if device not in self.seen and len(self.seen) >= self.max_devices:
            self.ignored += 1
            return False
        seen = self.seen.setdefault(device, Seen())
        if kind == "status":
            seen.status = payload[:MAX_STATUS_BYTES].decode("utf-8", "replace") or None
        else:
            seen.heartbeat, seen.problem = read_heartbeat(payload)
        if seen.status is None and seen.heartbeat is None and seen.problem is None:
            del self.seen[device]  # both retained messages were cleared
        else:
            seen.received = time.time()
        return True


def device_key_ok(key: str) -> bool:
    """`<device>`, or `<site>/<device>` on a central broker of sites."""
    levels = key.split("/")
    if len(levels) == 1:
        return bool(key)
    return len(levels) == 2 and all(levels) and levels[1] not in NOT_A_SITE_DEVICE


def run(
    cfg: Config,
    *,
    as_json: bool,
    watch: bool,
    timeout: float,
    interval: float = 1.0,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.time,
    fleet: FleetWatch | None = None,
    selection: Selection = EVERY_DEVICE,
    err: TextIO = sys.stderr,
) -> int:
    """Print the fleet once, or (watch) again whenever it changed, until interrupted.

    Raises EdgeAgentError (INTERNAL) when the network thread died: the CLI exits non-zero.
    """
    fleet = fleet or FleetWatch(cfg, selection=selection)
    heartbeat_s = cfg.mqtt.heartbeat_s
    warned = False
    try:
        fleet.start(timeout)
        while True:
            fleet.check_alive()
            rows = make_rows(
                fleet.snapshot(), now=clock(), heartbeat_s=heartbeat_s, selection=selection
            )
            if fleet.ignored and not warned:
                warned = True
                err.write(
                    f"edgeagent: more than {fleet.max_devices:,} devices under "
                    f"{fleet.prefix}/; the others are not shown (narrow it with --match)\n"
                )
            if as_json:
                out.write(rows_json(rows) + "\n")
            else:
                if watch and out.isatty():
                    out.write("\x1b[H\x1b[2J")  # redraw in place on a terminal
                out.write(render_table(rows))
            out.flush()
            if not watch:
                return 0 if rows else 1
            # Redraw on a change, at most every `interval` (ages tick on a terminal).
            fleet.wait_for_change(interval if out.isatty() else None)
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.stop()
