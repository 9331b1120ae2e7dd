"""Sending the hostile corpus to a live daemon on a real mosquitto, and judging the result.

Three observers, none of them the daemon:

* `Watcher`, a `#` subscriber: every message anyone publishes (but `$` topics). The test's
  own publisher writes only to task topics, so every other message is the daemon's; it
  must be under the device's own topics or the allowed reply prefix, and it is where the
  replies are collected (by Correlation Data, or by task id on the errors topic).
* `BrokerLog`, mosquitto's own log (`log_type all`): which task messages the broker sent
  to the daemon's client and which of them it PUBACKed. A message sent and never
  acknowledged is what deafens a device (it holds one of the broker's in-flight slots), so
  the verdict "every message acked" is the broker's, not the daemon's. It also names the
  client of every publish, so the daemon's publishes are attributed exactly, and it shows
  what the broker dropped (Maximum Packet Size) and every disconnect.
* /proc: the daemon process's RSS and that it is still the same process.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.protocol.request import salvage
from support.hostile import ERRORS, REPLIES, Case

TASKS = "edgeagent/dev1/tasks"
OWN = "edgeagent/dev1/"
DAEMON_CLIENT = "edgeagent-dev1"

_SENT = re.compile(r"Sending PUBLISH to (\S+) \(d(\d), q(\d), r\d, m(\d+), '([^']*)'")
_ACKED = re.compile(r"Received PUBACK from (\S+) \(Mid: (\d+)")
_DROPPED = re.compile(r"Dropping too large outgoing PUBLISH for (\S+) \((\d+) bytes\)")
_PUBLISHED = re.compile(r"Received PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)'")
_GONE = re.compile(
    r"(?:Client (\S+) (?:disconnected|closed its connection)|Socket error on client (\S+))"
)


class BrokerLog:
    """mosquitto's log, read as it grows: what went to a client and what it acknowledged."""

    def __init__(self, path: Path, client: str = DAEMON_CLIENT) -> None:
        self.path = path
        self.client = client
        self._offset = 0
        self._partial = b""
        self.unacked: dict[int, str] = {}  # packet id -> topic, sent to the client, no PUBACK yet
        self.delivered = 0  # QoS 1 task messages the broker sent to the client (not dropped)
        self.dropped = 0  # too large for the client's Maximum Packet Size
        self.published: Counter[str] = Counter()  # topics the client published on
        self.gone: list[str] = []  # disconnects of the client
        self._last_sent: int | None = None

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if (m := _SENT.search(line)) and m[1] == self.client:
            if m[3] == "1":
                mid = int(m[4])
                if m[2] == "0":  # a DUP resend is the same message again
                    self.delivered += 1
                self.unacked[mid] = m[5]
                self._last_sent = mid
        elif (m := _ACKED.search(line)) and m[1] == self.client:
            self.unacked.pop(int(m[2]), None)
        elif (m := _DROPPED.search(line)) and m[1] == self.client:
            self.dropped += 1
            self.delivered -= 1  # logged as sent first
            if self._last_sent is not None:  # logged right after the PUBLISH it drops
                self.unacked.pop(self._last_sent, None)
        elif (m := _PUBLISHED.search(line)) and m[1] == self.client:
            self.published[m[2]] += 1
        elif (m := _GONE.search(line)) and self.client in (m[1], m[2]):
            self.gone.append(line)

    def wait_all_acked(self, timeout: float) -> dict[int, str]:
        """The messages still unacknowledged once none is left, or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            self.read()
            if not self.unacked or time.monotonic() > deadline:
                return dict(self.unacked)
            time.sleep(0.1)


@dataclass(eq=False)
class Seen:
    topic: str
    payload: bytes
    correlation: bytes | None
    retain: bool

    def body(self) -> Any:
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


class Client:
    """A v5 client of the test (clean session)."""

    def __init__(self, port: int, name: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            assert time.monotonic() < deadline, "the test client cannot connect"
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Watcher(Client):
    """Everything published on the broker (`#`), in arrival order."""

    def __init__(self, port: int) -> None:
        super().__init__(port, "watcher")
        self.seen: list[Seen] = []
        self.arrived = threading.Condition()
        self.client.on_message = self._message
        result, _ = self.client.subscribe("#", qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        # Subscribed once the daemon's own retained status comes back through it.

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self.arrived:
            self.seen.append(
                Seen(
                    msg.topic,
                    bytes(msg.payload),
                    bytes(correlation) if correlation else None,
                    msg.retain,
                )
            )
            self.arrived.notify_all()


@dataclass
class Sent:
    n: int
    case: Case
    task_id: str
    correlation: bytes | None
    expect_reply: bool  # a reply naming it (by Correlation Data or task id)
    anonymous: bool = False  # 3.1.1, no id to salvage: its reply is on the errors topic, id null
    replies: list[Seen] = field(default_factory=list)


@dataclass
class Outcome:
    sent: list[Sent]
    anonymous: list[Seen]  # errors-topic replies that name no task
    strays: list[str]  # daemon publishes outside its own topics and the reply prefix
    replies_on_actions: list[str]  # reply bodies on the device's actions topics
    elapsed_s: float
    rss_mib: list[tuple[int, float]]  # (messages sent, RSS); the first after the warm-up
    rss_mib_loaded: float  # right after the model was loaded, before any task

    def codes(self) -> Counter[str]:
        """Codes of every reply, anonymous ones included."""
        named = Counter(code(r) for s in self.sent for r in s.replies)
        return named + Counter(code(m) for m in self.anonymous)


def code(seen: Seen) -> str:
    body = seen.body()
    if not isinstance(body, dict):
        return "(not JSON)"
    if body.get("status") == "ok":
        return "ok"
    return str((body.get("error") or {}).get("code"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Driver:
    """Sends cases with at most `window` replies outstanding and collects the replies.

    v5: each message carries the case's Response Topic (or REPLIES) and its own
    Correlation Data. 3.1.1 daemons get neither (a 3.1.1 subscription strips them): replies
    are matched by task id, and a reply naming no task counts as anonymous.
    """

    def __init__(
        self,
        port: int,
        watcher: Watcher,
        pid: int,
        *,
        v5: bool,
        max_payload_bytes: int,
        window: int = 8,
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.publisher = Client(port, "hostile")
        self.watcher = watcher
        self.pid = pid
        self.v5 = v5
        self.window = window
        self.run_id = uuid.uuid4().hex[:6]
        self.sent: list[Sent] = []
        self._by_correlation: dict[bytes, Sent] = {}
        self._by_id: dict[str, Sent] = {}
        self._pending = 0  # sent, a reply expected, none yet
        self._pending_anonymous = 0  # sent, an anonymous errors-topic reply expected
        self._matched = 0  # watcher messages looked at

    def close(self) -> None:
        self.publisher.close()

    def run(
        self,
        cases: list[Case],
        *,
        warmup: int = 0,
        timeout_s: float = 300,
        checkpoints: Collection[int] = (),
        at_checkpoint: Callable[[], None] | None = None,
    ) -> Outcome:
        """Send them all; `timeout_s` is how long the daemon may stay silent. The RSS
        baseline is the highest reading until the first `warmup` cases are answered (the
        model's compute buffers, caches and batch streams are allocated by the first
        tasks, not by hostile input).
        `at_checkpoint` runs before the cases numbered in `checkpoints` are sent, while
        earlier ones may still be in the daemon's hands."""
        started = time.monotonic()
        loaded = rss_mib(self.pid)
        rss: list[tuple[int, float]] = []
        # The highest reading while the warm-up runs: its batches allocate the engine's
        # extra KV streams, which are given back once it is idle (a few seconds), so a
        # single reading at its end may see one stream where the run will use several.
        warmup_high = loaded
        for n, case in enumerate(cases):
            if n < warmup:
                warmup_high = max(warmup_high, rss_mib(self.pid))
            if n == warmup:
                self._wait(lambda: self._pending + self._pending_anonymous == 0, timeout_s)
                rss.append((n, max(warmup_high, rss_mib(self.pid))))
            if n in checkpoints and at_checkpoint is not None:
                at_checkpoint()
            self._wait(lambda: self._pending + self._pending_anonymous < self.window, timeout_s)
            self._send(n, case)
            if n > warmup and (n - warmup) % 200 == 0:
                rss.append((n, rss_mib(self.pid)))
        self._wait(lambda: self._pending + self._pending_anonymous == 0, timeout_s)
        rss.append((len(self.sent), rss_mib(self.pid)))
        return self._outcome(time.monotonic() - started, rss, loaded)

    def _send(self, n: int, case: Case) -> None:
        task_id = f"h{self.run_id}-{n}"
        correlation = None
        props = None
        if self.v5:
            correlation = f"c{self.run_id}-{n}".encode()
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = REPLIES if case.response_topic is None else case.response_topic
            props.CorrelationData = correlation
        anonymous = not self.v5 and not salvageable(case, self.max_payload_bytes)
        expect = not anonymous and not (self.v5 and case.over_packet_size)  # v5: dropped
        item = Sent(n, case, task_id, correlation, expect, anonymous)
        self.sent.append(item)
        self._by_id[task_id] = item
        if correlation is not None:
            self._by_correlation[correlation] = item
        self._pending += expect
        self._pending_anonymous += anonymous
        info = self.publisher.client.publish(TASKS, case.with_id(task_id), qos=1, properties=props)
        info.wait_for_publish(30)

    def _wait(self, done: Any, timeout_s: float) -> None:
        """Match arriving replies until done(); fail when none arrives for timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self.watcher.arrived:
            while True:
                arrived = self.watcher.seen[self._matched :]
                self._matched += len(arrived)
                for seen in arrived:
                    self._match(seen)
                if arrived:
                    deadline = time.monotonic() + timeout_s
                if done():
                    return
                if time.monotonic() > deadline:
                    missing = [
                        (s.n, s.case.name) for s in self.sent if s.expect_reply and not s.replies
                    ]
                    pytest.fail(f"no reply within {timeout_s} s for {missing[:20]}")
                self.watcher.arrived.wait(1.0)

    def _match(self, seen: Seen) -> None:
        if seen.topic == TASKS:
            return
        owner = self._by_correlation.get(seen.correlation) if seen.correlation else None
        if owner is None and (seen.topic == ERRORS or seen.topic.startswith(OWN + "results/")):
            body = seen.body()
            if isinstance(body, dict) and "status" in body:
                owner = self._by_id.get(str(body.get("id")))
                if owner is None and body.get("id") is None and seen.topic == ERRORS:
                    self._pending_anonymous -= 1
        if owner is not None:
            if not owner.replies and owner.expect_reply:
                self._pending -= 1
            owner.replies.append(seen)

    def _outcome(self, elapsed: float, rss: list[tuple[int, float]], loaded: float) -> Outcome:
        with self.watcher.arrived:
            seen = list(self.watcher.seen)
        owned = {id(r) for s in self.sent for r in s.replies}
        anonymous = [
            m
            for m in seen
            if m.topic == ERRORS
            and id(m) not in owned
            and isinstance(m.body(), dict)
            and m.body().get("id") is None
        ]
        strays = sorted({m.topic for m in seen if m.topic != TASKS and not _allowed(m.topic)})
        on_actions = [
            m.topic
            for m in seen
            if m.topic.startswith(OWN + "actions/") and "status" in (m.body() or {})
        ]
        return Outcome(self.sent, anonymous, strays, on_actions, elapsed, rss, loaded)


def _allowed(topic: str) -> bool:
    return topic.startswith((OWN, "replies/")) or topic == "replies"


def salvageable(case: Case, max_payload_bytes: int) -> bool:
    """Whether a reply to this case can name its id (3.1.1 matching)."""
    task_id, _ = salvage(case.with_id("h-x"), max_payload_bytes)
    return task_id is not None
