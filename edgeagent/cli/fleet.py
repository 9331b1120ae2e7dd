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
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

import paho.mqtt.client as mqtt

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
from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.client import new_client

# Only "online" and "offline" are statuses; anything longer is not worth reading.
MAX_STATUS_BYTES = 64
# Pending "change" events beyond this are redundant: one redraw shows them all.
EVENTS_MAX = 64
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
    "make_row",
    "make_rows",
    "render_table",
    "rows_json",
    "run",
]


class FleetWatch:
    """A subscription to every device's retained status and heartbeat.

    paho's network loop runs on a thread of our own, so that its end is known: when it
    dies (an exception escaped a callback), `failure` says why and the view exits non-zero
    instead of showing a fleet that silently stopped updating.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        selection: Selection = EVERY_DEVICE,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.selection = selection
        self.max_devices = max_devices
        self.seen: dict[str, Seen] = {}
        self.ignored = 0  # messages of devices beyond max_devices
        self.failure: str | None = None
        # Events for the main thread: sync, change, refused:<reason>, died.
        self.events: queue.Queue[str] = queue.Queue(maxsize=EVENTS_MAX)
        self._lock = threading.Lock()  # seen: written on the network thread, read on ours
        self._marker = f"{self.prefix}/clients/{uuid.uuid4().hex}/sync"
        self._client = new_client(cfg.mqtt, client_id=f"edgeagent-fleet-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._thread = threading.Thread(target=self._network, name="fleet-mqtt", daemon=True)

    def snapshot(self) -> dict[str, Seen]:
        with self._lock:
            return dict(self.seen)

    def _signal(self, event: str) -> None:
        # A full queue holds redraws nobody has taken yet: a "change" adds nothing to them,
        # and the network thread must never block on a main thread that has stopped
        # reading (a lost "died" is still seen by check_alive).
        with contextlib.suppress(queue.Full):
            if event == "change":
                self.events.put_nowait(event)
            else:
                self.events.put(event, timeout=5)

    def _network(self) -> None:
        try:
            self._client.loop_forever()
        except BaseException as exc:  # whatever ended the loop is reported
            self.failure = f"{type(exc).__name__}: {exc}"[:200]
            self._signal("died")

    # The network thread: only parse and hand over.

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._signal(f"refused:{reason}")
            return
        # QoS 0: a broker sends a subscription's retained messages at most at its QoS, and
        # holds back QoS 1 ones beyond its in-flight window and per-client queue (mosquitto:
        # 20 + max_queued_messages 1000) and drops the rest, silently for the client. At
        # QoS 1 a view of 1,000 devices lost 980 heartbeats and the marker (waiting out
        # its timeout); at QoS 0 mosquitto writes them out at once (docs/scale.md).
        self._client.subscribe(
            [
                (f"{self.prefix}/+/status", 0),
                (f"{self.prefix}/+/heartbeat", 0),
                (self._marker, 0),
            ]
        )

    def _on_subscribe(self, *_args: Any) -> None:
        self._client.publish(self._marker, b"", qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._marker:
            self._signal("sync")
            return
        device, _, kind = msg.topic[len(self.prefix) + 1 :].rpartition("/")
        if not device or "/" in device or not self.selection.wants_device(device):
            return  # left out before anything is parsed or kept
        payload = bytes(msg.payload)
        with self._lock:
            if device not in self.seen and len(self.seen) >= self.max_devices:
                self.ignored += 1
                return
            seen = self.seen.setdefault(device, Seen())
            if kind == "status":
                seen.status = payload[:MAX_STATUS_BYTES].decode("utf-8", "replace") or None
            else:
                seen.heartbeat, seen.problem = read_heartbeat(payload)
            if seen.status is None and seen.heartbeat is None and seen.problem is None:
                del self.seen[device]  # both retained messages were cleared
            else:
                seen.received = time.time()
        self._signal("change")

    def start(self, timeout: float) -> None:
        """Connect, subscribe and wait until the retained messages are in."""
        try:
            self._client.connect(self.cfg.mqtt.host, self.cfg.mqtt.port, keepalive=30)
        except OSError as exc:
            raise EdgeAgentError(
                ErrorCode.TIMEOUT,
                f"cannot reach broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port}: {exc}",
            ) from exc
        self._thread.start()
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
            self.check_alive()
            if event == "sync":
                return

    def check_alive(self) -> None:
        """Raise INTERNAL once the network thread has died: what is shown is stale."""
        if self.failure is not None or (self._thread.ident and not self._thread.is_alive()):
            raise EdgeAgentError(
                ErrorCode.INTERNAL,
                f"the fleet view lost its MQTT network thread ({self.failure or 'ended'})",
            )

    def stop(self) -> None:
        self._client.disconnect()
        if self._thread.ident is not None:
            self._thread.join(5)


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
            with contextlib.suppress(queue.Empty):
                fleet.events.get(timeout=interval if out.isatty() else None)
                time.sleep(min(interval, 0.2))  # coalesce a burst of retained updates
                while not fleet.events.empty():
                    fleet.events.get_nowait()
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.stop()
