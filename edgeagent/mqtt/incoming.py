"""A task or hold command as it arrived: what the rest of the daemon reads of a message.

Built on paho's network thread, so it carries the connection generation stamped there
(mqtt/generation.py): an ack for it is only ever sent on the connection it came on.

Hostile input: a payload larger than `max_payload_bytes` is dropped here (only its size
travels on), so nothing downstream can read it; on MQTT v5 the broker does not even send
it (Maximum Packet Size, mqtt/limits.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import paho.mqtt.client as mqtt


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


def incoming_message(msg: mqtt.MQTTMessage, *, generation: int, max_payload_bytes: int) -> Incoming:
    """paho's message as an Incoming (on paho's thread), an oversize payload dropped."""
    props = getattr(msg, "properties", None)
    response_topic = getattr(props, "ResponseTopic", None) if props else None
    correlation = getattr(props, "CorrelationData", None) if props else None
    payload = bytes(msg.payload)
    oversize = None
    if len(payload) > max_payload_bytes:
        # Never handed on: a 30 MiB payload must not wait in the incoming queue or
        # reach a parser (MQTT 3.1.1 has no Maximum Packet Size to stop it earlier).
        oversize, payload = len(payload), b""
    return Incoming(
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
