"""The fleet view's rows: what a device's retained messages say, sorted, filtered, shown.

One row per device, every text in it safe to print (terminal_text.printable); the table
for a terminal, the JSON (a list of rows, its shape fixed) for scripts. With a thousand
devices an operator looks for the few in trouble: `--sort` puts them first (`state`:
offline, paused, draining, stopped, starting, loading, then serving, stale rows first
within each; `age`: the longest silent first; `tokens`: the slowest first) and `--state`
or `--match` (a device-id glob) leaves out the rest.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeagent.cli.terminal_text import printable
from edgeagent.protocol.heartbeat import UntrustedHeartbeat

# A heartbeat older than this many periods means the device stopped reporting, whatever
# its retained status says (a hung daemon whose connection stays up).
STALE_PERIODS = 3


@dataclass(slots=True)
class Seen:
    """What the broker has retained for one device, as far as it could be read."""

    status: str | None = None
    heartbeat: UntrustedHeartbeat | None = None
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
    beat = seen.heartbeat or UntrustedHeartbeat()
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


# --sort: problems first (see the module docstring); ties stay in device-id order.
STATE_ORDER = ("offline", "paused", "draining", "stopped", "starting", "loading", "serving")
_RANK = {state: rank for rank, state in enumerate(STATE_ORDER)}
SORTS: dict[str, Callable[[Row], tuple[Any, ...]]] = {
    "device": lambda _row: (),
    "state": lambda r: (_RANK.get(r.state or "", len(STATE_ORDER)), not r.stale),
    "tokens": lambda r: (r.tokens_per_s is None, r.tokens_per_s or 0.0),
    "age": lambda r: (r.last_seen_s is not None, -(r.last_seen_s or 0.0)),
}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which devices the view shows, in which order."""

    sort: str = "device"
    states: frozenset[str] = frozenset()  # a row's state, or "stale"; empty: all
    match: str | None = None  # a device-id glob (fnmatch, case-sensitive); None: all

    def wants_device(self, device: str) -> bool:
        """Decided before a device's messages are parsed or kept (the view's memory)."""
        return self.match is None or fnmatch.fnmatchcase(device, self.match)

    def wants_row(self, row: Row) -> bool:
        if not self.states:
            return True
        return row.state in self.states or (row.stale and "stale" in self.states)


EVERY_DEVICE = Selection()


def make_rows(
    seen: Mapping[str, Seen],
    *,
    now: float,
    heartbeat_s: float,
    selection: Selection = EVERY_DEVICE,
) -> list[Row]:
    """One row per device the selection wants, sorted (by device id, then as it says)."""
    rows = [
        make_row(device, seen[device], now=now, heartbeat_s=heartbeat_s)
        for device in sorted(seen)
        if selection.wants_device(device)
    ]
    return sorted(filter(selection.wants_row, rows), key=SORTS[selection.sort])


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
