"""A subscription to retained messages, for the CLI's views (status --fleet, held).

When have all retained messages arrived? MQTT has no end marker. The broker sends the
retained messages of a subscription before it handles the client's next packet, so the
view publishes a marker to a private topic of its own right after the SUBACK
(`<prefix>/clients/<random>/sync`): once the marker comes back, everything retained
before it is in (a timeout covers brokers that reorder).

paho's network loop runs on a thread of our own, so that its end is known: when it dies
(an exception escaped a callback), `failure` says why and the view exits non-zero instead
of showing something that silently stopped updating.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.client import connect_once, new_client

# Pending "change" events beyond this are redundant: one redraw shows them all.
EVENTS_MAX = 64


class RetainedWatch:
    """Subscribes to `filters`; `handle(topic, payload)` runs on the network thread under
    `lock` and says whether what the view shows changed."""

    def __init__(self, cfg: Config, filters: Sequence[str], *, name: str) -> None:
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.failure: str | None = None
        # Events for the main thread: sync, change, refused:<reason>, died.
        self.events: queue.Queue[str] = queue.Queue(maxsize=EVENTS_MAX)
        self.lock = threading.Lock()  # the view's state: written on the network thread
        self._filters = list(filters)
        self._marker = f"{self.prefix}/clients/{uuid.uuid4().hex}/sync"
        self._client = new_client(cfg.mqtt, client_id=f"edgeagent-{name}-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._thread = threading.Thread(target=self._network, name=f"{name}-mqtt", daemon=True)

    def handle(self, topic: str, payload: bytes) -> bool:
        raise NotImplementedError

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
        # QoS 1 the fleet view of 1,000 devices lost 980 heartbeats and the marker (waiting
        # out its timeout); at QoS 0 mosquitto writes them out at once (docs/scale.md).
        self._client.subscribe([(topic, 0) for topic in [*self._filters, self._marker]])

    def _on_subscribe(self, *_args: Any) -> None:
        self._client.publish(self._marker, b"", qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._marker:
            self._signal("sync")
            return
        with self.lock:
            changed = self.handle(msg.topic, bytes(msg.payload))
        if changed:
            self._signal("change")

    def start(self, timeout: float) -> None:
        """Connect, subscribe and wait until the retained messages are in."""
        connect_once(self._client, self.cfg.mqtt)
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
                f"the view lost its MQTT network thread ({self.failure or 'ended'})",
            )

    def stop(self) -> None:
        self._client.disconnect()
        if self._thread.ident is not None:
            self._thread.join(5)

    def wait_for_change(self, interval: float | None) -> None:
        """Block until something changed (at most `interval` s), then let a burst of
        retained updates settle and take all of them as one."""
        with contextlib.suppress(queue.Empty):
            self.events.get(timeout=interval)
            time.sleep(min(interval or 0.2, 0.2))
            while not self.events.empty():
                self.events.get_nowait()
