"""An in-memory MQTT link for unit tests of admission, delivery and the daemon.

It has the link's surface (publish -> future, ack, connected, start/stop) and lets a
test play the broker: deliver task messages (with DUP and reply addresses), confirm
or refuse each publish (PUBACK reason codes), drop the connection and come back on
a new generation. Nothing waits on time: a publish stays unconfirmed until the test
(or `auto_confirm`) settles it. Like the real link it refuses, at once and without
raising, a publish whose topic is no valid topic name or whose payload has no UTF-8 form
(PublishInvalid), and drops a payload over `max_payload_bytes` on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeagent.mqtt.incoming import Incoming
from edgeagent.mqtt.refusals import OutgoingQueueFull, PublishInvalid, PublishRefused
from edgeagent.protocol.reply_policy import topic_name_problem

NOT_AUTHORIZED = 135  # mosquitto's PUBACK reason when an ACL denies the topic
RECHECK_S = 0.01  # wait_until: how often a predicate on state outside the link is re-read


@dataclass(eq=False)
class Published:
    topic: str
    payload: str
    retain: bool
    correlation_data: bytes | None
    future: asyncio.Future[None]
    generation: int  # the connection it was handed to

    @property
    def body(self) -> Any:
        return json.loads(self.payload)

    @property
    def settled(self) -> bool:
        return self.future.done()


class FakeLink:
    def __init__(
        self,
        *,
        auto_confirm: bool = True,
        connected: bool = True,
        max_payload_bytes: int | None = None,
    ) -> None:
        self.auto_confirm = auto_confirm
        self.max_payload_bytes = max_payload_bytes
        # publish() raises this (a link with a bug), instead of returning a future.
        self.publish_raises: Exception | None = None
        self.invalid: list[tuple[str, str]] = []  # (topic, problem) refused by the link
        self.refuse: dict[str, int] = {}  # topic -> reason code of its PUBACK
        self.queue_full = False  # paho's outgoing queue: publish() fails with OutgoingQueueFull
        self.queue_full_attempts = 0
        self.published: list[Published] = []
        self.acked: list[Incoming] = []
        self.ack_attempts: list[Incoming] = []
        self.generation = 1
        self.connected = asyncio.Event()
        self._start_connected = connected
        self._mids = itertools.count(1)
        self.on_message: Callable[[Incoming], None] | None = None
        self.on_connect: Callable[[], None] | None = None
        self.started = False
        self.stopped = False
        self._changed = asyncio.Event()  # set on every publish and ack

    # -- the link's surface ----------------------------------------------------------

    def start(
        self, on_message: Callable[[Incoming], None], on_connect: Callable[[], None] | None = None
    ) -> None:
        self.started = True
        self.on_message = on_message
        self.on_connect = on_connect
        if self._start_connected:
            self.reconnect(new_generation=False)

    def stop(self) -> None:
        self.stopped = True
        self.connected.clear()

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.publish_raises is not None:
            self._changed.set()
            raise self.publish_raises
        problem = topic_name_problem(topic)
        if problem is None and isinstance(payload, str):
            try:
                payload.encode("utf-8")
            except UnicodeEncodeError as exc:
                problem = f"payload: {exc}"
        if problem is not None:
            self.invalid.append((topic, problem))
            self._changed.set()
            future.set_exception(PublishInvalid(topic, problem))
            return future
        if self.queue_full:
            self.queue_full_attempts += 1
            self._changed.set()
            future.set_exception(OutgoingQueueFull())
            return future
        text = payload.decode() if isinstance(payload, bytes) else payload
        published = Published(topic, text, retain, correlation_data, future, self.generation)
        self.published.append(published)
        self._changed.set()
        if self.auto_confirm and self.connected.is_set():
            self._settle(published)
        return future

    def ack(self, message: Incoming) -> bool:
        self.ack_attempts.append(message)
        self._changed.set()
        if message.generation != self.generation or not self.connected.is_set():
            return False
        self.acked.append(message)
        self._changed.set()
        return True

    # -- playing the broker -------------------------------------------------------------

    def message(
        self,
        payload: Any,
        *,
        topic: str = "edgeagent/dev1/tasks",
        dup: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        qos: int = 1,
    ) -> Incoming:
        """A task message on the current connection (not delivered yet)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        oversize = None
        if self.max_payload_bytes is not None and len(body) > self.max_payload_bytes:
            oversize, body = len(body), b""  # what the real link does on arrival
        return Incoming(
            topic=topic,
            payload=body,
            oversize=oversize,
            qos=qos,
            mid=next(self._mids),
            dup=dup,
            generation=self.generation,
            response_topic=response_topic,
            correlation_data=correlation_data,
        )

    def deliver(self, payload: Any, **kwargs: Any) -> Incoming:
        """The broker sends a new task message."""
        message = self.message(payload, **kwargs)
        self._hand_over(message)
        return message

    def redeliver(self, message: Incoming, *, dup: bool = True) -> Incoming:
        """The broker sends `message` again (with DUP) on the current connection."""
        again = dataclasses.replace(message, dup=dup, generation=self.generation)
        self._hand_over(again)
        return again

    def _hand_over(self, message: Incoming) -> None:
        assert self.on_message is not None, "start() first"
        self.on_message(message)

    async def wait_until(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        """Until `predicate()` holds: re-checked after every publish and ack, and every
        RECHECK_S besides, because a predicate may read state the link never sees change
        (the daemon's queue filling after a store lookup)."""
        async with asyncio.timeout(within_s):
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK_S):
                        await self._changed.wait()

    async def wait_for_publish(self, topic: str, count: int = 1) -> list[Published]:
        await self.wait_until(lambda: len(self.on(topic)) >= count)
        return self.on(topic)

    async def wait_for_acks(self, count: int) -> list[Incoming]:
        await self.wait_until(lambda: len(self.acked) >= count)
        return self.acked

    def disconnect(self) -> None:
        """The connection drops: acks of its messages can no longer be sent."""
        self.connected.clear()
        self.generation += 1

    def reconnect(self, *, new_generation: bool = True) -> None:
        """A new connection: paho resends what was not confirmed (settled here)."""
        if new_generation:
            self.generation += 1
        self.connected.set()
        if self.auto_confirm:
            for published in self.unconfirmed():
                self._settle(published)
        if self.on_connect is not None:
            self.on_connect()

    def confirm(self, published: Published) -> None:
        published.future.set_result(None)

    def refuse_publish(self, published: Published, reason_code: int = NOT_AUTHORIZED) -> None:
        published.future.set_exception(PublishRefused(reason_code, "Not authorized"))

    def _settle(self, published: Published) -> None:
        code = self.refuse.get(published.topic)
        if code is None:
            self.confirm(published)
        else:
            self.refuse_publish(published, code)

    # -- looking at what happened ---------------------------------------------------------

    def unconfirmed(self) -> list[Published]:
        return [p for p in self.published if not p.settled]

    def on(self, topic: str) -> list[Published]:
        return [p for p in self.published if p.topic == topic]

    def bodies(self, topic: str) -> list[Any]:
        return [p.body for p in self.on(topic)]
