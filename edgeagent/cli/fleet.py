"""`edgeagent status --fleet`: every device under the topic prefix, one row each.

Every daemon keeps a retained `status` (online/offline, the last will says offline when
it dies) and a retained JSON heartbeat under `<prefix>/<device>/`, so one subscription
to `<prefix>/+/status` and `<prefix>/+/heartbeat` shows the whole fleet at once.
(cli/retained_watch.py knows when all retained messages have arrived).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from edgeagent.cli.fleet_heartbeat import Heartbeat, read_heartbeat
from edgeagent.cli.retained_watch import RetainedWatch
from edgeagent.cli.terminal_text import printable
from edgeagent.config import Config

# A heartbeat older than this many periods means the device stopped reporting, whatever
# its retained status says (a hung daemon whose connection stays up).
STALE_PERIODS = 3
# Only "online" and "offline" are statuses; anything longer is not worth reading.
MAX_STATUS_BYTES = 64


@dataclass(slots=True)
class Seen:
    """What the broker has retained for one device, as far as it could be read."""

    status: str | None = None
    heartbeat: Heartbeat | None = None
    problem: str | None = None  # what was wrong with what the device published
    received: float = field(default=0.0)  # time.time() of the last message


@dataclass(frozen=True, slots=True)
class Row:
    """One device, every text in it safe to print (terminal_text.printable)."""

    device: str
    online: bool
    state: str | None
    queue: str | None
    tokens_per_s: float | None
    budget: int | None
    memory_mb: float | None
    temp_c: float | None
    last_seen_s: float | None  # age of the heartbeat
    stale: bool
    problem: str | None = None


def make_row(device: str, seen: Seen, *, now: float, heartbeat_s: float) -> Row:
    beat = seen.heartbeat or Heartbeat()
    age = max(now - beat.ts, 0.0) if beat.ts is not None else None
    online = seen.status == "online"
    queue_info, context = beat.queue, beat.context
    depth = queue_info.depth if queue_info else None
    capacity = queue_info.capacity if queue_info else None
    memory = context.available_mb if context else None
    if memory is None and beat.memory is not None:
        memory = beat.memory.host_available_mb
    state = printable(beat.state, 24) if beat.state is not None else None
    return Row(
        device=printable(device),
        online=online,
        state=state if online else "offline",
        queue=f"{depth}/{capacity}" if depth is not None and capacity is not None else None,
        tokens_per_s=beat.tokens_per_s,
        budget=context.budget if context else None,
        memory_mb=memory,
        temp_c=beat.board.temp_c if beat.board else None,
        last_seen_s=None if age is None else round(age, 1),
        stale=online and (age is None or age > STALE_PERIODS * heartbeat_s),
        problem=None if seen.problem is None else printable(seen.problem, 120),
    )


def make_rows(seen: Mapping[str, Seen], *, now: float, heartbeat_s: float) -> list[Row]:
    """One row per device, sorted by device id."""
    return [
        make_row(device, seen[device], now=now, heartbeat_s=heartbeat_s) for device in sorted(seen)
    ]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


COLUMNS = (
    "DEVICE", "ONLINE", "STATE", "QUEUE", "TOK/S", "BUDGET", "MEM MiB", "TEMP", "LAST SEEN", "NOTE",
)  # fmt: skip


def render_table(rows: Sequence[Row]) -> str:
    """A fixed-width table, one line per device."""
    lines = [
        (
            r.device,
            "yes" if r.online else "no",
            _cell(r.state) + (" (stale)" if r.stale else ""),
            _cell(r.queue),
            _cell(r.tokens_per_s, "{:.1f}"),
            _cell(r.budget),
            _cell(r.memory_mb, "{:.0f}"),
            _cell(r.temp_c, "{:.1f}°C"),
            _age(r.last_seen_s),
            r.problem or "",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *lines, strict=False)]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [COLUMNS, *lines]
    ]
    return "\n".join(out) + "\n"


def rows_json(rows: Sequence[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], ensure_ascii=False)


class FleetWatch(RetainedWatch):
    """A subscription to every device's retained status and heartbeat."""

    def __init__(self, cfg: Config) -> None:
        prefix = cfg.mqtt.topic_prefix
        super().__init__(cfg, [f"{prefix}/+/status", f"{prefix}/+/heartbeat"], name="fleet")
        self.seen: dict[str, Seen] = {}

    def snapshot(self) -> dict[str, Seen]:
        with self.lock:
            return dict(self.seen)

    def handle(self, topic: str, payload: bytes) -> bool:
        device, _, kind = topic[len(self.prefix) + 1 :].rpartition("/")
        if not device or "/" in device:
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
) -> int:
    """Print the fleet once, or (watch) again whenever it changed, until interrupted.

    Raises EdgeAgentError (INTERNAL) when the network thread died: the CLI exits non-zero.
    """
    fleet = fleet or FleetWatch(cfg)
    heartbeat_s = cfg.mqtt.heartbeat_s
    try:
        fleet.start(timeout)
        while True:
            fleet.check_alive()
            rows = make_rows(fleet.snapshot(), now=clock(), heartbeat_s=heartbeat_s)
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
