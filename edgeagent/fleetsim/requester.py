"""The workload's caller: sends tasks (to one device, or to the fleet's shared topic) and
takes the replies, as an MQTT v5 request/response client.

Each task's id is unique; a reply is matched by the id in its JSON body, so a second reply
to the same task (an answer-once violation) is counted, not mistaken for another task's.
Latency is from the publish call to the reply's arrival on this client's network thread.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

from edgeagent.fleetsim.engine import SCHEMA
from edgeagent.mqtt.client import mqtt_properties, no_delay

REPLY_PREFIX = "replies"  # in the daemon's default reply_prefixes
SESSION_EXPIRY_S = 600


@dataclass(slots=True)
class Sent:
    kind: str  # "device" or "fleet"
    at: float  # time.perf_counter() at publish
    replies: list[tuple[float, str | None, str | None]] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Requester:
    def __init__(self, host: str, port: int, *, prefix: str) -> None:
        self.prefix = prefix
        self.reply_topic = f"{REPLY_PREFIX}/fleetsim-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._sent: dict[str, Sent] = {}
        self._strays = 0  # replies to no task of ours
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleetsim-caller-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_socket_open = no_delay
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)
        self._client.max_queued_messages_set(0)  # the workload bounds itself
        props = mqtt_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S  # replies sent during a restart wait
        self._client.connect(host, port, clean_start=False, properties=props)
        self._client.loop_start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self._client.subscribe(self.reply_topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            body = json.loads(msg.payload)
            task_id, device, status = body.get("id"), body.get("device"), body.get("status")
        except (ValueError, AttributeError):
            task_id = device = status = None
        with self._lock:
            sent = self._sent.get(task_id) if isinstance(task_id, str) else None
            if sent is None:
                self._strays += 1
            else:
                sent.replies.append((now, device, status))

    def send(self, device: str | None) -> str:
        """One task to `device`, or to the fleet topic (None); returns its id."""
        kind = "fleet" if device is None else "device"
        task_id = f"{kind[0]}-{uuid.uuid4().hex[:12]}"
        topic = f"{self.prefix}/fleet/tasks" if device is None else f"{self.prefix}/{device}/tasks"
        props = mqtt_properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        body = json.dumps({"id": task_id, "input": "Is the greenhouse fine?", "schema": SCHEMA})
        with self._lock:
            self._sent[task_id] = Sent(kind, time.perf_counter())
        self._client.publish(topic, body, qos=1, properties=props)
        return task_id

    def outstanding(self) -> int:
        with self._lock:
            return sum(1 for s in self._sent.values() if not s.replies)

    def summary(self, devices: Sequence[str]) -> dict[str, Any]:
        """Answered once or not, latency, errors, and how the fleet tasks were shared
        among `devices` (one that took none counts as 0)."""
        with self._lock:
            sent = list(self._sent.values())
            strays = self._strays
        latencies = [(s.replies[0][0] - s.at) * 1000 for s in sent if s.replies]
        shares = Counter(dict.fromkeys(devices, 0))
        shares.update(
            device
            for s in sent
            if s.kind == "fleet" and s.replies and (device := s.replies[0][1]) is not None
        )
        fleet_sent = sum(1 for s in sent if s.kind == "fleet")
        return {
            "sent": {"device": len(sent) - fleet_sent, "fleet": fleet_sent},
            "answered": len(latencies),
            "unanswered": sum(1 for s in sent if not s.replies),
            "duplicates": sum(max(len(s.replies) - 1, 0) for s in sent),
            "errors": sum(1 for s in sent if s.replies and s.replies[0][2] != "ok"),
            "stray_replies": strays,
            "latency_ms": {
                "p50": _round(percentile(latencies, 0.5)),
                "p99": _round(percentile(latencies, 0.99)),
                "max": _round(max(latencies, default=None)),
            },
            "fleet_share": {
                "devices": sum(1 for n in shares.values() if n),
                "min": min(shares.values(), default=0),
                "max": max(shares.values(), default=0),
                "sum": sum(shares.values()),
            },
        }

    def close(self) -> None:
        props = mqtt_properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0  # nothing of ours stays on the broker
        self._client.disconnect(properties=props)
        self._client.loop_stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
