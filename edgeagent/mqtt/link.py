"""The MQTT connection: paho-mqtt 2.x bridged to asyncio.

paho runs its own network thread (loop_start), which also reconnects; how long it waits
before each attempt is ours (mqtt/backoff.py: exponential, with full jitter, so a fleet
does not reconnect in lockstep after a broker restart), set from its callbacks on its
thread before it waits. Its other callbacks do nothing but hand events to the event
loop (call_soon_threadsafe), so all our state is touched from one thread — except the
connection generation, which paho's thread stamps where the connection happens (see
below).

Delivery: QoS 1 with manual acknowledgement. An incoming task is acknowledged only
after its reply was confirmed by the broker (PUBACK with a success reason code), so a
crash at any point makes the broker deliver it again. A publish's future resolves on
a success PUBACK and fails with PublishRefused on a failure reason code (MQTT v5; a
3.1.1 broker has no way to refuse).

Acks carry the connection generation they belong to: a packet id from a dropped
connection must never be acked on the next one, where it may name a different
message. The generation is advanced on paho's thread when a connection is lost and
right before a new one is opened (on_pre_connect, after paho dropped the packets
still queued for the old socket); an ack checks it and queues its PUBACK under the
same lock, so it either goes out on its own connection or not at all.

Hostile input: a task message's payload larger than `max_payload_bytes` is dropped here
(only its size travels on), so nothing downstream can read it; on MQTT v5 the broker does
not even send it (Maximum Packet Size). A publish that paho or the broker would choke on
(a wildcard, a control character, a lone surrogate, a malformed payload) never reaches
paho: its future fails with PublishInvalid, which delivery treats like a refusal.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes

from edgeagent.config import MqttConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.backoff import Backoff, ReconnectSchedule
from edgeagent.mqtt.client import mqtt_properties, new_client
from edgeagent.protocol.reply_policy import topic_name_problem

log = structlog.get_logger("edgeagent.mqtt.link")
T = TypeVar("T")

# Replies waiting for the broker while it is away are kept by paho; bound them.
MAX_QUEUED_PUBLISHES = 1000
# MQTT v5 Receive Maximum when the caller names none: at most this many task messages
# are delivered to us unacknowledged at a time, which bounds every per-message structure
# downstream (incoming queue, deliveries waiting for their reply). The daemon sets it from
# its queue (service.admission.receive_window). MQTT 3.1.1 brokers apply their own limit
# (mosquitto: max_inflight_messages, default 20).
RECEIVE_MAXIMUM = 40
RECEIVE_MAXIMUM_LIMIT = 65535  # the property is a two-byte integer
# Maximum Packet Size counts the whole PUBLISH, not only its payload: fixed header (at
# most 5 bytes), packet id, property length, the topic, and the properties. The Response
# Topic is bounded by reply_topic_max_bytes (a longer one is refused anyway); this is
# what is left for Correlation Data, User Properties and the rest, so a task with a
# payload within max_payload_bytes is never dropped by the broker for its properties.
PACKET_HEADROOM_BYTES = 8192
# A v5 reason code for what the link refuses itself (MQTT v5: 0x90 Topic Name invalid).
TOPIC_NAME_INVALID = 0x90


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool  # the broker marks a redelivery (after a reconnect) with DUP
    generation: int  # connection this message arrived on (stamped on paho's thread)
    response_topic: str | None  # as sent: "" is an (invalid) empty Response Topic
    correlation_data: bytes | None
    # The size of a payload over max_payload_bytes, which the link dropped (payload is
    # then b""): admission answers PAYLOAD_TOO_LARGE without anything reading it.
    oversize: int | None = None


class PublishRefused(Exception):  # noqa: N818 - names what the broker did
    """The broker answered a publish with a failure reason code (PUBACK >= 0x80)."""

    def __init__(self, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused the publish: {reason} ({reason_code})")
        self.reason_code = reason_code
        self.reason = reason


class PublishInvalid(PublishRefused):
    """A publish the link refused itself, before paho or the broker saw it: a topic that
    is no valid topic name (paho would raise, mosquitto drop the connection) or a payload
    that cannot be encoded. Final, like a broker's refusal."""

    def __init__(self, topic: str, problem: str) -> None:
        super().__init__(TOPIC_NAME_INVALID, f"not publishable: {problem}")
        self.topic = topic


async def with_timeout(awaitable: asyncio.Future[T], seconds: float, what: str) -> T:
    """Await with a deadline; a timeout becomes a typed TIMEOUT error."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError as exc:
        raise EdgeAgentError(ErrorCode.TIMEOUT, f"{what} timed out after {seconds:g} s") from exc


def maximum_packet_size(cfg: MqttConfig, subscriptions: list[str]) -> int:
    """MQTT v5 Maximum Packet Size for our CONNECT: a task of max_payload_bytes fits with
    its topic and properties; anything much larger is dropped by the broker unsent."""
    longest_topic = max((len(t.encode()) for t in subscriptions), default=0)
    return cfg.max_payload_bytes + longest_topic + cfg.reply_topic_max_bytes + PACKET_HEADROOM_BYTES


def refusal(reason_code: Any) -> PublishRefused | None:
    """None for a success reason code (v3.1.1 PUBACKs carry none), else the refusal."""
    if not getattr(reason_code, "is_failure", False):
        return None
    return PublishRefused(int(reason_code.value), str(reason_code))


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will_topic: str,
        receive_maximum: int = RECEIVE_MAXIMUM,
        client: mqtt.Client | None = None,
        control_subscriptions: list[str] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """`client` and `backoff` are for tests; by default they are built from cfg.

        `receive_maximum`: how many unacknowledged task messages the daemon can hold
        (MQTT v5 Receive Maximum; see service.admission.receive_window).
        `control_subscriptions`: subscribed too, but small messages (the holds' confirm and
        reject): they do not size the Maximum Packet Size the task topics need.
        """
        self.cfg = cfg
        self._subscriptions = [*subscriptions, *(control_subscriptions or [])]
        self.receive_maximum = max(1, min(receive_maximum, RECEIVE_MAXIMUM_LIMIT))
        self.maximum_packet_size = maximum_packet_size(cfg, subscriptions)
        self._on_message: Callable[[Incoming], None] = _drop
        self._on_connect_cb: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        # time.monotonic() of the last connection attempt and of the last accepting
        # CONNACK, stamped on paho's thread: when they really happened, however busy the
        # event loop (the fleet simulator reads them: a herd is attempts at one instant).
        self.attempted_at: float | None = None
        self.connected_at: float | None = None
        self.session_present = False  # the last CONNACK's Session Present flag
        self.refusals = 0  # PUBACKs with a failure reason code (metrics)
        self._v5 = cfg.protocol == "5"
        self._client = client or new_client(
            cfg,
            client_id=client_id,
            v5=self._v5,
            # v3.1.1: a persistent session is how the broker keeps our tasks.
            persistent_session=True,
            manual_ack=True,
        )
        self._client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        # Used on paho's thread only: the wait before each reconnect attempt.
        self._reconnects = ReconnectSchedule(
            backoff or Backoff(cfg.reconnect_base_s, cfg.reconnect_max_s)
        )
        self.reconnect_delay: float | None = None  # the wait set last (seconds)
        self._client.will_set(will_topic, "offline", qos=1, retain=True)
        self._client.on_pre_connect = self._paho_pre_connect
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_connect_fail = self._paho_connect_fail
        self._client.on_message = self._paho_message
        self._client.on_publish = self._paho_publish
        # Guards the generation and the publish bookkeeping, shared with paho's thread.
        self._lock = threading.Lock()
        self._generation = 0
        # mid -> future of a publish waiting for PUBACK. The PUBACK can arrive before
        # publish() returns the mid to us, so early outcomes are remembered too.
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early: dict[int, PublishRefused | None] = {}
        self._closing = False

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    # -- paho thread ---------------------------------------------------------------

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _paho_pre_connect(self, _c: Any, _u: Any) -> None:
        # A new connection is about to be opened: packet ids of the old one are void.
        with self._lock:
            self._generation += 1
        self.attempted_at = time.monotonic()

    def _paho_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._to_loop(self._refused, str(reason))
            return
        self.connected_at = time.monotonic()
        self._reconnects.connected()
        # The broker kept our session (and, with it, most likely our retained messages).
        self.session_present = bool(getattr(flags, "session_present", False))
        # Subscribing from here (paho thread) keeps it ordered before any message of
        # the new connection is handled.
        for topic in self._subscriptions:
            self._client.subscribe(topic, qos=1)
        self._to_loop(self._connected)

    def _paho_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._lock:
            self._generation += 1  # acks queued from now on would reach no one
        self.reconnect_delay = self._reconnects.before_wait(self._client)
        self._to_loop(self._disconnected, str(reason))

    def _paho_connect_fail(self, _c: Any, _u: Any) -> None:
        # No broker (yet): the next attempt waits longer.
        self.reconnect_delay = self._reconnects.before_wait(self._client)

    def _paho_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        with self._lock:
            generation = self._generation
        payload = bytes(msg.payload)
        oversize = None
        if len(payload) > self.cfg.max_payload_bytes:
            # Never handed on: a 30 MiB payload must not wait in the incoming queue or
            # reach a parser (MQTT 3.1.1 has no Maximum Packet Size to stop it earlier).
            oversize, payload = len(payload), b""
        incoming = Incoming(
            topic=msg.topic,
            payload=payload,
            qos=msg.qos,
            mid=msg.mid,
            dup=bool(msg.dup),
            generation=generation,
            # Only an absent Response Topic is None: an empty one is refused by admission.
            response_topic=response_topic if isinstance(response_topic, str) else None,
            correlation_data=bytes(correlation) if correlation else None,
            oversize=oversize,
        )
        self._to_loop(self._on_message, incoming)

    def _paho_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        outcome = refusal(reason)
        if outcome is not None:
            self.refusals += 1  # paho's thread is the only writer
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early[mid] = outcome
        if future is not None:
            self._to_loop(_settle, future, outcome)

    # -- event loop side -------------------------------------------------------------

    def _connected(self) -> None:
        self.connects += 1
        self.connected.set()
        log.info("mqtt connected", host=self.cfg.host, port=self.cfg.port, connects=self.connects)
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _refused(self, reason: str) -> None:
        log.warning("mqtt connect refused", reason=reason)

    def _disconnected(self, reason: str) -> None:
        if self.connected.is_set():
            (log.info if self._closing else log.warning)("mqtt disconnected", reason=reason)
        self.connected.clear()

    def start(
        self, on_message: Callable[[Incoming], None], on_connect: Callable[[], None] | None = None
    ) -> None:
        """Start connecting in the background; paho retries until the broker answers.

        `on_message` and `on_connect` run on the event loop.
        """
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_connect_cb = on_connect
        props = None
        if self._v5:
            props = mqtt_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            # The broker never has more unacknowledged tasks with us than we can hold,
            # and never sends a packet larger than a task may be (it drops it instead).
            props.ReceiveMaximum = self.receive_maximum
            props.MaximumPacketSize = self.maximum_packet_size
        self._client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[None]:
        """Publish with QoS 1 (paho resends across reconnects).

        The future resolves on a success PUBACK, fails with PublishRefused when the
        broker refuses, with PublishInvalid at once when the topic or payload cannot be
        published, and with BUSY at once when paho's outgoing queue is full. Never raises.
        """
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        # Checked before paho sees it: paho raises on wildcards and surrogates, and a
        # control character passes paho but makes mosquitto drop the connection as a
        # malformed packet, after which paho would resend it on every reconnect.
        problem = topic_name_problem(topic)
        if problem is not None:
            future.set_exception(PublishInvalid(topic, f"topic {problem}"))
            return future
        try:
            data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
            props = None
            if self._v5 and correlation_data is not None:
                props = mqtt_properties(PacketTypes.PUBLISH)
                props.CorrelationData = correlation_data
            # Not under self._lock: paho calls _paho_publish holding its own message lock,
            # which publish() takes too; holding ours across it could deadlock.
            info = self._client.publish(topic, data, qos=1, retain=retain, properties=props)
        except Exception as exc:  # whatever paho raises, the caller gets a settled future
            future.set_exception(PublishInvalid(topic, f"{type(exc).__name__}: {exc}"))
            return future
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            future.set_exception(EdgeAgentError(ErrorCode.BUSY, "too many unsent MQTT messages"))
            return future
        with self._lock:
            if info.mid in self._early:
                _settle(future, self._early.pop(info.mid))
            else:
                self._pending[info.mid] = future
        return future

    def ack(self, message: Incoming) -> bool:
        """Acknowledge a task; False if its connection is gone (the broker will resend it)."""
        if message.qos == 0:
            return False
        with self._lock:
            if message.generation != self._generation:
                return False
            try:
                return self._client.ack(message.mid, message.qos) == mqtt.MQTT_ERR_SUCCESS
            except Exception:  # a socket error here is a lost connection: redelivered
                log.exception("ack failed", mid=message.mid)
                return False

    def stop(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()


def _settle(future: asyncio.Future[None], outcome: PublishRefused | None) -> None:
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


def _drop(_message: Incoming) -> None:
    """Before start(): nothing can arrive yet."""
