"""The MQTT connection: paho-mqtt 2.x bridged to asyncio.

paho runs its own network thread (loop_start), which also reconnects with backoff.
Its callbacks do nothing but hand events to the event loop (call_soon_threadsafe),
so all our state is touched from one thread.

Delivery: QoS 1 with manual acknowledgement. An incoming task is acknowledged only
after its reply was confirmed by the broker (PUBACK), so a crash at any point makes
the broker deliver it again. Acks carry the connection generation they belong to:
a packet id from a dropped connection must never be acked on the next one, where it
may name a different message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes

from edgeagent.config import MqttConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.client import mqtt_properties, new_client

log = structlog.get_logger("edgeagent.mqtt.link")
T = TypeVar("T")

# Replies waiting for the broker while it is away are kept by paho; bound them.
MAX_QUEUED_PUBLISHES = 1000


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool
    generation: int  # connection number this message arrived on
    response_topic: str | None
    correlation_data: bytes | None


async def with_timeout(awaitable: asyncio.Future[T], seconds: float, what: str) -> T:
    """Await with a deadline; a timeout becomes a typed TIMEOUT error."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError as exc:
        raise EdgeAgentError(ErrorCode.TIMEOUT, f"{what} timed out after {seconds:g} s") from exc


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will_topic: str,
        on_message: Callable[[Incoming], None],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._subscriptions = subscriptions
        self._will_topic = will_topic
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.generation = 0
        self.connects = 0
        self._v5 = cfg.protocol == "5"
        self._client = new_client(
            cfg,
            client_id=client_id,
            v5=self._v5,
            # v3.1.1: a persistent session is how the broker keeps our tasks.
            persistent_session=True,
            manual_ack=True,
        )
        self._client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.will_set(will_topic, "offline", qos=1, retain=True)
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_message = self._paho_message
        self._client.on_publish = self._paho_publish
        # mid -> future of a publish waiting for PUBACK. PUBACK can arrive before
        # publish() returns the mid to us, so early acks are remembered too.
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._closing = False

    # -- paho thread -> event loop -----------------------------------------------

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _paho_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused", reason=str(reason))
            return
        # Subscribing and announcing from here (paho thread) keeps them ordered before
        # any message of the new connection is handled.
        for topic in self._subscriptions:
            self._client.subscribe(topic, qos=1)
        self._to_loop(self._connected)

    def _paho_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._to_loop(self._disconnected, str(reason))

    def _paho_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        incoming = Incoming(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            mid=msg.mid,
            dup=bool(msg.dup),
            generation=self.generation,
            response_topic=response_topic or None,
            correlation_data=bytes(correlation) if correlation else None,
        )
        self._to_loop(self._on_message, incoming)

    def _paho_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early.add(mid)
        if future is not None:
            self._to_loop(_resolve, future)

    # -- event loop side ---------------------------------------------------------

    def _connected(self) -> None:
        self.generation += 1
        self.connects += 1
        self.connected.set()
        log.info("mqtt connected", host=self.cfg.host, port=self.cfg.port, connects=self.connects)
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _disconnected(self, reason: str) -> None:
        if self.connected.is_set():
            (log.info if self._closing else log.warning)("mqtt disconnected", reason=reason)
        self.connected.clear()

    def start(self) -> None:
        """Start connecting in the background; paho retries until the broker answers."""
        self._loop = asyncio.get_running_loop()
        props = None
        if self._v5:
            props = mqtt_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
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
        """Publish with QoS 1; the future resolves on PUBACK (paho resends across reconnects)."""
        assert self._loop is not None, "start() first"
        props = None
        if self._v5 and correlation_data is not None:
            props = mqtt_properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        future: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            future.set_exception(EdgeAgentError(ErrorCode.BUSY, "too many unsent MQTT messages"))
            return future
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                future.set_result(None)
            else:
                self._pending[info.mid] = future
        return future

    def ack(self, message: Incoming) -> bool:
        """Acknowledge a task; False if its connection is gone (the broker will resend it)."""
        if message.qos == 0 or message.generation != self.generation or not self.connected.is_set():
            return False
        return self._client.ack(message.mid, message.qos) == mqtt.MQTT_ERR_SUCCESS

    def stop(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
