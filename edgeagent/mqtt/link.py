"""The MQTT connection: paho-mqtt 2.x bridged to asyncio.

paho runs its own network thread (loop_start), which also reconnects; how long it waits
before each attempt is ours (mqtt/backoff.py: exponential, with full jitter, so a fleet
does not reconnect in lockstep after a broker restart), set from its callbacks on its
thread before it waits. Its other callbacks do nothing but hand events to the event
loop (call_soon_threadsafe), so all our state is touched from one thread — except the
connection generation (mqtt/generation.py) and the publishes waiting for their PUBACK
(mqtt/pubacks.py), which paho's thread updates under their locks.

Delivery: QoS 1 with manual acknowledgement. An incoming task (mqtt/incoming.py) is
acknowledged only after its reply was confirmed by the broker (PUBACK with a success
reason code), so a crash at any point makes the broker deliver it again; an ack goes out
only on the connection the message came on. A publish's future fails with
PublishRefused or PublishInvalid (mqtt/refusals.py) when it cannot be delivered, and
with OutgoingQueueFull when paho has no room for it yet.

Hostile input: an oversize task payload is dropped on arrival (mqtt/incoming.py) and,
on MQTT v5, not even sent by the broker (mqtt/limits.py). A publish that paho or the
broker would choke on (a wildcard, a control character, a lone surrogate, a malformed
payload) never reaches paho: its future fails with PublishInvalid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes

from edgeagent.config import MqttConfig
from edgeagent.mqtt.backoff import Backoff, ReconnectSchedule
from edgeagent.mqtt.client import mqtt_properties, new_client
from edgeagent.mqtt.generation import Generation
from edgeagent.mqtt.incoming import Incoming, incoming_message
from edgeagent.mqtt.limits import (
    MAX_QUEUED_PUBLISHES,
    RECEIVE_MAXIMUM,
    RECEIVE_MAXIMUM_LIMIT,
    connect_properties,
    maximum_packet_size,
)
from edgeagent.mqtt.pubacks import Pubacks, complete_publish
from edgeagent.mqtt.refusals import OutgoingQueueFull, PublishInvalid
from edgeagent.protocol.reply_policy import topic_name_problem

log = structlog.get_logger("edgeagent.mqtt.link")


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
        # Both shared with paho's thread, each under its own lock.
        self._generation = Generation()
        self._pubacks = Pubacks()
        self._closing = False

    @property
    def generation(self) -> int:
        return self._generation.current()

    @property
    def refusals(self) -> int:
        """PUBACKs with a failure reason code so far (metrics)."""
        return self._pubacks.refusals

    # -- paho thread ---------------------------------------------------------------

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _paho_pre_connect(self, _c: Any, _u: Any) -> None:
        # A new connection is about to be opened: packet ids of the old one are void.
        self._generation.advance()
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
        self._generation.advance()  # acks queued from now on would reach no one
        self.reconnect_delay = self._reconnects.before_wait(self._client)
        self._to_loop(self._disconnected, str(reason))

    def _paho_connect_fail(self, _c: Any, _u: Any) -> None:
        # No broker (yet): the next attempt waits longer.
        self.reconnect_delay = self._reconnects.before_wait(self._client)

    def _paho_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        incoming = incoming_message(
            msg,
            generation=self._generation.current(),
            max_payload_bytes=self.cfg.max_payload_bytes,
        )
        self._to_loop(self._on_message, incoming)

    def _paho_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        waiting = self._pubacks.acked(mid, reason)
        if waiting is not None:
            self._to_loop(complete_publish, *waiting)

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
            props = connect_properties(
                self.cfg,
                receive_maximum=self.receive_maximum,
                max_packet_size=self.maximum_packet_size,
            )
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
        published, and with OutgoingQueueFull at once when paho's outgoing queue is full.
        Never raises.
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
            # Not under the Pubacks lock: paho calls _paho_publish holding its own message
            # lock, which publish() takes too; holding ours across it could deadlock.
            info = self._client.publish(topic, data, qos=1, retain=retain, properties=props)
        except Exception as exc:  # whatever paho raises, the caller gets a settled future
            future.set_exception(PublishInvalid(topic, f"{type(exc).__name__}: {exc}"))
            return future
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            future.set_exception(OutgoingQueueFull())
            return future
        self._pubacks.expect(info.mid, future)
        return future

    def ack(self, message: Incoming) -> bool:
        """Acknowledge a task; False if its connection is gone (the broker will resend it)."""
        if message.qos == 0:
            return False
        return self._generation.if_current(message.generation, lambda: self._send_ack(message))

    def _send_ack(self, message: Incoming) -> bool:
        try:
            return self._client.ack(message.mid, message.qos) == mqtt.MQTT_ERR_SUCCESS
        except Exception:  # a socket error here is a lost connection: redelivered
            log.exception("ack failed", mid=message.mid)
            return False

    def stop(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()


def _drop(_message: Incoming) -> None:
    """Before start(): nothing can arrive yet."""
