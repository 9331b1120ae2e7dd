"""`edgeagent held`: the pending holds of one device or of the whole fleet.

Each device retains one message per pending hold on `<prefix>/<device>/held/<task id>`
and clears it (a zero-length retained payload) when the hold is resolved or expires, so
one subscription to `<prefix>/+/held/+` lists them all, no request to the devices.
What a device retains is untrusted (cli/held_message.py reads it); the view keeps at most
MAX_HOLDS of them, whatever a device floods the broker with, and says how many it left out.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TextIO

from edgeagent.cli.held_message import Hold, read_hold
from edgeagent.cli.retained_watch import RetainedWatch
from edgeagent.config import Config

# A device keeps at most [catalog] max_pending_holds (default 100) pending; a fleet view
# bounded at this many stays small whatever a hostile device retains.
MAX_HOLDS = 1000

COLUMNS = ("DEVICE", "TASK", "ACTION", "ARGS", "CONF", "WHY", "EXPIRES", "NOTE")


class HoldWatch(RetainedWatch):
    """A subscription to the retained pending holds of one device (or all)."""

    def __init__(self, cfg: Config, device: str | None) -> None:
        prefix = cfg.mqtt.topic_prefix
        super().__init__(cfg, [f"{prefix}/{device or '+'}/held/+"], name="held")
        self.holds: dict[tuple[str, str], Hold] = {}
        self.left_out = 0  # holds beyond MAX_HOLDS, not shown

    def snapshot(self) -> tuple[dict[tuple[str, str], Hold], int]:
        with self.lock:
            return dict(self.holds), self.left_out

    def handle(self, topic: str, payload: bytes) -> bool:
        levels = topic[len(self.prefix) + 1 :].split("/")
        if len(levels) != 3 or levels[1] != "held" or not levels[0] or not levels[2]:
            return False
        key = (levels[0], levels[2])
        if not payload:
            return self.holds.pop(key, None) is not None  # resolved or expired
        if key not in self.holds and len(self.holds) >= MAX_HOLDS:
            self.left_out += 1
            return True
        self.holds[key] = read_hold(key[0], key[1], payload)
        return True


def _expires_in(expires_at: str | None, now: float) -> str:
    if expires_at is None:
        return "-"
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        return "?"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    if seconds <= 0:
        return "expired"
    return f"in {seconds / 60:.0f}m" if seconds < 7200 else f"in {seconds / 3600:.0f}h"


def sorted_holds(holds: Mapping[tuple[str, str], Hold]) -> list[Hold]:
    """By device, then oldest first (held_at), then task id."""
    return sorted(holds.values(), key=lambda h: (h.device, h.held_at or "", h.task_id))


def render_table(holds: Sequence[Hold], *, now: float, left_out: int = 0) -> str:
    lines = [
        (
            h.device,
            h.task_id,
            h.action or "-",
            h.args or "-",
            "-" if h.confidence is None else f"{h.confidence:.2f}",
            h.why or "-",
            _expires_in(h.expires_at, now),
            h.problem or "",
        )
        for h in holds
    ]
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *lines, strict=False)]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [COLUMNS, *lines]
    ]
    if left_out:
        out.append(f"({left_out} more not shown: over {MAX_HOLDS} holds)")
    return "\n".join(out) + "\n"


def holds_json(holds: Sequence[Hold]) -> str:
    return json.dumps([asdict(h) for h in holds], ensure_ascii=False)


def run(
    cfg: Config,
    *,
    device: str | None,
    as_json: bool,
    watch: bool,
    timeout: float,
    interval: float = 1.0,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.time,
    view: HoldWatch | None = None,
) -> int:
    """Print the pending holds once (exit 0, also when there are none), or (watch) again
    on every change until interrupted. Raises EdgeAgentError when the view cannot work."""
    view = view or HoldWatch(cfg, device)
    try:
        view.start(timeout)
        while True:
            view.check_alive()
            holds, left_out = view.snapshot()
            rows = sorted_holds(holds)
            if as_json:
                out.write(holds_json(rows) + "\n")
            else:
                if watch and out.isatty():
                    out.write("\x1b[H\x1b[2J")  # redraw in place on a terminal
                out.write(render_table(rows, now=clock(), left_out=left_out))
            out.flush()
            if not watch:
                return 0
            view.wait_for_change(interval if out.isatty() else None)
    except KeyboardInterrupt:
        return 0
    finally:
        view.stop()
