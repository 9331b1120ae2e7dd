"""What the broker carries: a subscriber on `#` that counts messages and bytes by kind,
and the broker's own counters from `$SYS`.

Kinds come from the topic (the daemon's topics, protocol/topics.py): heartbeat, status,
discovery (Home Assistant configs), tasks (a device's and the fleet's), replies (results
and caller-chosen reply topics), other (last_action, actions, errors). A message the
broker sends because it is retained (the retain flag on delivery: a replay at subscribe
time, not traffic) is not counted. Bytes are topic plus payload, what the application
publishes; $SYS's byte counters include the protocol's framing and every subscriber's copy.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

from edgeagent.mqtt.client import mqtt_properties

KINDS = ("heartbeat", "status", "discovery", "tasks", "replies", "other")
# The $SYS values the report reads (mosquitto's names).
SYS_TOPICS = {
    "$SYS/broker/messages/received": "messages_received",
    "$SYS/broker/messages/sent": "messages_sent",
    "$SYS/broker/bytes/received": "bytes_received",
    "$SYS/broker/bytes/sent": "bytes_sent",
    "$SYS/broker/retained messages/count": "retained",
    "$SYS/broker/clients/connected": "clients_connected",
}
SESSION_EXPIRY_S = 600


_DEVICE_KINDS = {"heartbeat": "heartbeat", "status": "status", "tasks": "tasks"}


def kind_of(topic: str, *, prefix: str, discovery_prefix: str, reply_prefix: str) -> str:
    if topic.startswith(discovery_prefix + "/"):
        return "discovery"
    if topic.startswith(reply_prefix + "/"):
        return "replies"
    levels = topic.removeprefix(prefix + "/").split("/") if topic.startswith(prefix + "/") else []
    if len(levels) >= 3 and levels[1] == "results":
        return "replies"
    if len(levels) == 2:  # <device>/heartbeat, <device>/status, <device>/tasks, fleet/tasks
        return _DEVICE_KINDS.get(levels[1], "other")
    return "other"


@dataclass(frozen=True, slots=True)
class Reading:
    """Counts since the meter started, at `at` (time.monotonic())."""

    at: float
    messages: dict[str, int]
    bytes: dict[str, int]
    sys: dict[str, float] = field(default_factory=dict)
    sys_at: float | None = None  # when the last $SYS value arrived (once a second)


def rates(start: Reading, end: Reading) -> dict[str, Any]:
    """Messages/s and bytes/s by kind between two readings, and the broker's own."""
    seconds = max(end.at - start.at, 1e-9)
    by_kind = {
        kind: {
            "messages_per_s": round((end.messages[kind] - start.messages[kind]) / seconds, 2),
            "bytes_per_s": round((end.bytes[kind] - start.bytes[kind]) / seconds, 1),
        }
        for kind in KINDS
    }
    total_messages = sum(end.messages.values()) - sum(start.messages.values())
    total_bytes = sum(end.bytes.values()) - sum(start.bytes.values())
    fresh = end.sys_at is not None and end.sys_at > start.at  # $SYS lags by up to 1 s
    broker = {
        f"{name}_per_s": round((end.sys[name] - start.sys[name]) / seconds, 1)
        for name in ("messages_received", "messages_sent", "bytes_received", "bytes_sent")
        if fresh and name in start.sys and name in end.sys and end.sys[name] >= start.sys[name]
    }
    return {
        "window_s": round(seconds, 1),
        "by_kind": by_kind,
        "messages_per_s": round(total_messages / seconds, 2),
        "bytes_per_s": round(total_bytes / seconds, 1),
        "broker": broker,
    }


class Meter:
    """An MQTT v5 client with a persistent session, so a broker restart loses no count."""

    def __init__(
        self, host: str, port: int, *, prefix: str, discovery_prefix: str, reply_prefix: str
    ) -> None:
        self._prefixes = {
            "prefix": prefix,
            "discovery_prefix": discovery_prefix,
            "reply_prefix": reply_prefix,
        }
        self._lock = threading.Lock()
        self._messages: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
        self._bytes: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
        self._sys: dict[str, float] = {}
        self._sys_at: float | None = None
        self.online_at: dict[str, float] = {}  # device -> last live "online" status
        self._status_prefix = prefix + "/"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleetsim-meter-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)  # back as soon as the broker is
        props = mqtt_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect(host, port, clean_start=False, properties=props)
        self._client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self._client.subscribe([("#", 1), ("$SYS/broker/#", 0)])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith("$SYS/"):
            name = SYS_TOPICS.get(topic)
            if name is not None:
                try:
                    value = float(msg.payload)
                except ValueError:
                    return
                with self._lock:
                    self._sys[name] = value
                    self._sys_at = time.monotonic()
            return
        if msg.retain:
            return  # a replay of what the broker holds, not traffic
        kind = kind_of(topic, **self._prefixes)
        with self._lock:
            self._messages[kind] += 1
            self._bytes[kind] += len(topic.encode()) + len(msg.payload)
            if kind == "status" and msg.payload == b"online":
                device = topic[len(self._status_prefix) :].rsplit("/", 1)[0]
                self.online_at[device] = time.monotonic()

    def reading(self) -> Reading:
        with self._lock:
            return Reading(
                time.monotonic(),
                dict(self._messages),
                dict(self._bytes),
                dict(self._sys),
                self._sys_at,
            )

    def sys_value(self, name: str) -> float | None:
        with self._lock:
            return self._sys.get(name)

    def close(self) -> None:
        props = mqtt_properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0  # nothing of ours stays on the broker
        self._client.disconnect(properties=props)
        self._client.loop_stop()
