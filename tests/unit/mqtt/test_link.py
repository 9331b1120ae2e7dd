"""The paho <-> asyncio bridge, without a broker.

A real (never connected) paho client stands behind the link; the tests call the link's
paho callbacks the way paho's network thread would, from another thread where the
order of events matters.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from support import aio

from edgeagent.config import MqttConfig
from edgeagent.mqtt.incoming import Incoming
from edgeagent.mqtt.limits import PACKET_HEADROOM_BYTES, maximum_packet_size
from edgeagent.mqtt.link import MqttLink
from edgeagent.mqtt.refusals import OutgoingQueueFull, PublishInvalid, PublishRefused

SUCCESS = ReasonCode(PacketTypes.PUBACK, "Success")
NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, "Not authorized")


class Paho(mqtt.Client):
    """A paho client that records acks instead of queueing PUBACK packets."""

    def __init__(self) -> None:
        super().__init__(
            mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.acks: list[int] = []
        self.before_return: Any = None  # runs inside publish(), after the mid is chosen

    def ack(self, mid: int, qos: int) -> mqtt.MQTTErrorCode:  # noqa: ARG002 - QoS 1 only here
        self.acks.append(mid)
        return mqtt.MQTT_ERR_SUCCESS

    def publish(self, *args: Any, **kwargs: Any) -> mqtt.MQTTMessageInfo:
        info = super().publish(*args, **kwargs)
        if self.before_return is not None:
            self.before_return(info.mid)
        return info


def make_link() -> tuple[MqttLink, Paho]:
    paho = Paho()
    link = MqttLink(
        MqttConfig(),
        client_id="t",
        subscriptions=["edgeagent/dev1/tasks"],
        will_topic="edgeagent/dev1/status",
        client=paho,
    )
    link._loop = asyncio.get_running_loop()  # start() would also connect
    return link, paho


def on_paho_thread(fn: Any, *args: Any) -> None:
    thread = threading.Thread(target=fn, args=args)
    thread.start()
    thread.join()


def run(coro):
    return aio.run(coro, 5)


def test_puback_success_resolves_the_publish():
    async def scenario():
        link, _ = make_link()
        future = link.publish("replies/a", "{}")
        mid = next(iter(link._pubacks._pending))
        on_paho_thread(link._paho_publish, None, None, mid, SUCCESS, None)
        await future

    run(scenario())


def test_puback_before_publish_returns_its_mid_is_not_lost():
    async def scenario():
        link, paho = make_link()
        # paho's thread gets the PUBACK while publish() has not returned the mid yet.
        paho.before_return = lambda mid: on_paho_thread(
            link._paho_publish, None, None, mid, SUCCESS, None
        )
        await link.publish("replies/a", "{}")
        assert link._pubacks._pending == {}
        assert link._pubacks._early == {}

    run(scenario())


def test_a_refusal_reason_code_fails_the_publish():
    async def scenario():
        link, paho = make_link()
        future = link.publish("actions/x", "{}")
        mid = next(iter(link._pubacks._pending))
        on_paho_thread(link._paho_publish, None, None, mid, NOT_AUTHORIZED, None)
        with pytest.raises(PublishRefused) as refused:
            await future
        assert refused.value.reason_code == 135
        # ... also when it comes early.
        paho.before_return = lambda mid: on_paho_thread(
            link._paho_publish, None, None, mid, NOT_AUTHORIZED, None
        )
        with pytest.raises(PublishRefused):
            await link.publish("actions/x", "{}")

    run(scenario())


def test_a_full_outgoing_queue_fails_the_publish_at_once():
    async def scenario():
        link, paho = make_link()
        paho.max_queued_messages_set(1)
        link.publish("replies/a", "{}")  # queued: not connected
        with pytest.raises(OutgoingQueueFull):
            await link.publish("replies/a", "{}")

    run(scenario())


def deliver(link: MqttLink, mid: int, *, dup: bool = False) -> None:
    message = mqtt.MQTTMessage(mid=mid, topic=b"edgeagent/dev1/tasks")
    message.payload = b"{}"
    message.qos = 1
    message.dup = dup
    on_paho_thread(link._paho_message, None, None, message)


def test_messages_carry_the_generation_stamped_on_pahos_thread():
    async def scenario():
        link, paho = make_link()
        received: list[Incoming] = []
        link._on_message = received.append
        on_paho_thread(link._paho_pre_connect, None, None)  # the first connection
        deliver(link, 7)
        await asyncio.sleep(0)  # call_soon_threadsafe hands it to the loop
        (first,) = received
        assert first.generation == link.generation
        assert link.ack(first)
        assert paho.acks == [7]
        # The connection drops and a new one is made before the loop acks.
        deliver(link, 8)
        on_paho_thread(link._paho_disconnect, None, None, None, "lost", None)
        on_paho_thread(link._paho_pre_connect, None, None)
        await asyncio.sleep(0)
        stale = received[1]
        assert not link.ack(stale)  # packet id 8 may name another message now
        assert paho.acks == [7]
        deliver(link, 8, dup=True)  # the broker's redelivery on the new connection
        await asyncio.sleep(0)
        fresh = received[2]
        assert fresh.dup
        assert link.ack(fresh)
        assert paho.acks == [7, 8]

    run(scenario())


def test_qos0_messages_are_never_acked():
    async def scenario():
        link, paho = make_link()
        message = Incoming(
            topic="t",
            payload=b"{}",
            qos=0,
            mid=0,
            dup=False,
            generation=link.generation,
            response_topic=None,
            correlation_data=None,
        )
        assert not link.ack(message)
        assert paho.acks == []

    run(scenario())


@pytest.mark.parametrize(
    "topic",
    ["replies/#", "replies/+/x", "replies/\x01x", "replies/\ud800", "replies/\ufffe", "", "$SYS/x"],
)
def test_an_unpublishable_topic_is_refused_by_the_link_not_raised(topic):
    async def scenario():
        link, paho = make_link()
        future = link.publish(topic, "{}")
        with pytest.raises(PublishInvalid) as refused:
            await future
        assert refused.value.reason_code == 0x90
        assert link._pubacks._pending == {}
        assert paho._out_messages == {}  # paho never saw it: nothing to resend on reconnect

    run(scenario())


def test_whatever_paho_raises_becomes_a_refusal():
    async def scenario():
        link, paho = make_link()

        def raising(*_args, **_kwargs):
            raise ValueError("Payload too large.")

        paho.publish = raising
        with pytest.raises(PublishInvalid):
            await link.publish("replies/a", "{}")
        with pytest.raises(PublishInvalid):  # a payload without a UTF-8 form
            await make_link()[0].publish("replies/a", '{"x": "\ud800"}')

    run(scenario())


def test_the_connect_asks_for_what_the_daemon_can_hold():
    async def scenario():
        paho = Paho()
        connects: list[Any] = []
        paho.connect_async = lambda *_a, **k: connects.append(k["properties"])
        paho.loop_start = lambda: None
        cfg = MqttConfig(max_payload_bytes=64 * 1024, reply_topic_max_bytes=512)
        link = MqttLink(
            cfg,
            client_id="t",
            subscriptions=["edgeagent/dev1/tasks", "$share/edgeagent/edgeagent/fleet/tasks"],
            will_topic="edgeagent/dev1/status",
            receive_maximum=33,
            client=paho,
        )
        link.start(lambda _m: None)
        (props,) = connects
        assert props.ReceiveMaximum == 33
        assert props.MaximumPacketSize == 64 * 1024 + 38 + 512 + PACKET_HEADROOM_BYTES
        assert maximum_packet_size(cfg, []) == 64 * 1024 + 512 + PACKET_HEADROOM_BYTES
        big = MqttLink(cfg, client_id="t", subscriptions=[], will_topic="s", receive_maximum=10**6)
        assert big.receive_maximum == 65535  # a two-byte property

    run(scenario())


def test_an_oversized_payload_is_dropped_on_arrival_and_an_empty_response_topic_kept():
    async def scenario():
        link, _ = make_link()  # max_payload_bytes: 256 KiB
        received: list[Incoming] = []
        link._on_message = received.append
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = ""
        for payload in (b"x" * (256 * 1024 + 1), b"{}"):
            message = mqtt.MQTTMessage(mid=1, topic=b"edgeagent/dev1/tasks")
            message.payload = payload
            message.qos = 1
            message.properties = props
            on_paho_thread(link._paho_message, None, None, message)
        await asyncio.sleep(0)  # call_soon_threadsafe hands them to the loop
        big, small = received
        assert (big.payload, big.oversize) == (b"", 256 * 1024 + 1)
        assert (small.payload, small.oversize) == (b"{}", None)
        assert small.response_topic == ""  # refused by admission, not mistaken for absent

    run(scenario())
