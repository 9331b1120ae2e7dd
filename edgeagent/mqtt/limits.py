"""How much the broker may send us and how much we keep for it: the link's bounds.

Every per-message structure downstream (incoming queue, deliveries waiting for their
reply) is bounded by how many task messages the broker hands us unacknowledged, and no
message larger than a task may be is read at all. The broker role of the Ansible play
computes the same Maximum Packet Size (its filter plugin mirrors maximum_packet_size).
"""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.config import MqttConfig
from edgeagent.mqtt.client import mqtt_properties

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


def maximum_packet_size(cfg: MqttConfig, subscriptions: list[str]) -> int:
    """MQTT v5 Maximum Packet Size for our CONNECT: a task of max_payload_bytes fits with
    its topic and properties; anything much larger is dropped by the broker unsent."""
    longest_topic = max((len(t.encode()) for t in subscriptions), default=0)
    return cfg.max_payload_bytes + longest_topic + cfg.reply_topic_max_bytes + PACKET_HEADROOM_BYTES


def connect_properties(
    cfg: MqttConfig, *, receive_maximum: int, max_packet_size: int
) -> Properties:
    """The MQTT v5 CONNECT properties: the session outlives a disconnect, and the
    broker never has more unacknowledged tasks with us than we can hold, and never
    sends a packet larger than a task may be (it drops it instead)."""
    props = mqtt_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = cfg.session_expiry_s
    props.ReceiveMaximum = receive_maximum
    props.MaximumPacketSize = max_packet_size
    return props
