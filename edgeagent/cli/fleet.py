"""`edgeagent status --fleet`: every device under the topic prefix, one row each.

Every daemon keeps a retained `status` (online/offline, the last will says offline when
it dies) and a retained JSON heartbeat under `<prefix>/<device>/`, so one subscription
to `<prefix>/+/status` and `<prefix>/+/heartbeat` shows the whole fleet at once.

When have all retained messages arrived? MQTT has no end marker. The broker sends the
retained messages of a subscription before it handles the client's next packet, so the
view publishes a marker to a private topic of its own right after the SUBACK: once the
marker comes back, everything retained before it is in (a timeout covers brokers that
reorder).
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.client import new_client

# A heartbeat older than this many periods means the device stopped reporting, whatever
# its retained status says (a hung daemon whose connection stays up).
STALE_PERIODS = 3


@dataclass(slots=True)
class Seen:
    """What the broker has retained for one device."""

    status: str | None = None
    heartbeat: dict[str, Any] | None = None
    received: float = field(default=0.0)  # time.time() of the last message


@dataclass(frozen=True, slots=True)
class Row:
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


def _get(data: Mapping[str, Any] | None, *path: str) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def make_row(device: str, seen: Seen, *, now: float, heartbeat_s: float) -> Row:
    beat = seen.heartbeat
    ts = _get(beat, "ts")
    age = max(now - ts, 0.0) if isinstance(ts, (int, float)) else None
    online = seen.status == "online"
    depth, capacity = _get(beat, "queue", "depth"), _get(beat, "queue", "capacity")
    memory = _get(beat, "context", "available_mb")
    if memory is None:
        memory = _get(beat, "memory", "host_available_mb")
    return Row(
        device=device,
        online=online,
        state=_get(beat, "state") if online else "offline",
        queue=f"{depth}/{capacity}" if depth is not None and capacity is not None else None,
        tokens_per_s=_get(beat, "tokens_per_s"),
        budget=_get(beat, "context", "budget"),
        memory_mb=memory,
        temp_c=_get(beat, "board", "temp_c"),
        last_seen_s=None if age is None else round(age, 1),
        stale=online and (age is None or age > STALE_PERIODS * heartbeat_s),
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


COLUMNS = ("DEVICE", "ONLINE", "STATE", "QUEUE", "TOK/S", "BUDGET", "MEM MiB", "TEMP", "LAST SEEN")


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


class FleetWatch:
    """A subscription to every device's retained status and heartbeat."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.seen: dict[str, Seen] = {}
        self.events: queue.Queue[str] = queue.Queue()  # "sync", "change" or "connected"
        self._marker = f"{self.prefix}/clients/{uuid.uuid4().hex}/sync"
        self._client = new_client(cfg.mqtt, client_id=f"edgeagent-fleet-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # paho's network thread: only parse and hand over.

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.events.put(f"refused:{reason}")
            return
        self._client.subscribe(
            [
                (f"{self.prefix}/+/status", 1),
                (f"{self.prefix}/+/heartbeat", 1),
                (self._marker, 1),
            ]
        )

    def _on_subscribe(self, *_args: Any) -> None:
        self._client.publish(self._marker, b"", qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._marker:
            self.events.put("sync")
            return
        device, _, kind = msg.topic[len(self.prefix) + 1 :].rpartition("/")
        if not device or "/" in device:
            return
        seen = self.seen.setdefault(device, Seen())
        if kind == "status":
            seen.status = bytes(msg.payload).decode("utf-8", "replace") or None
        else:
            try:
                beat = json.loads(msg.payload) if msg.payload else None
            except ValueError:
                return  # not ours, or damaged: the next heartbeat replaces it
            seen.heartbeat = beat if isinstance(beat, dict) else None
        if seen.status is None and seen.heartbeat is None:
            del self.seen[device]  # both retained messages were cleared
        else:
            seen.received = time.time()
        self.events.put("change")

    def start(self, timeout: float) -> None:
        """Connect, subscribe and wait until the retained messages are in."""
        try:
            self._client.connect(self.cfg.mqtt.host, self.cfg.mqtt.port, keepalive=30)
        except OSError as exc:
            raise EdgeAgentError(
                ErrorCode.TIMEOUT,
                f"cannot reach broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port}: {exc}",
            ) from exc
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                if not self._client.is_connected():
                    raise EdgeAgentError(ErrorCode.TIMEOUT, "no CONNACK from the broker") from None
                return  # connected, but the marker never came back: show what arrived
            if event.startswith("refused:"):
                raise EdgeAgentError(ErrorCode.INVALID_REQUEST, f"the broker refused: {event[8:]}")
            if event == "sync":
                return

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def run(
    cfg: Config,
    *,
    as_json: bool,
    watch: bool,
    timeout: float,
    interval: float = 1.0,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.time,
) -> int:
    """Print the fleet once, or (watch) again whenever it changed, until interrupted."""
    fleet = FleetWatch(cfg)
    heartbeat_s = cfg.mqtt.heartbeat_s
    try:
        fleet.start(timeout)
        while True:
            rows = make_rows(fleet.seen, now=clock(), heartbeat_s=heartbeat_s)
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
            with contextlib.suppress(queue.Empty):
                fleet.events.get(timeout=interval if out.isatty() else None)
                time.sleep(min(interval, 0.2))  # coalesce a burst of retained updates
                while not fleet.events.empty():
                    fleet.events.get_nowait()
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.stop()
