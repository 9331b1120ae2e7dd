"""Why a publish did not reach the broker, as exceptions its future fails with.

A publish's future resolves on a success PUBACK and fails with PublishRefused on a
failure reason code (MQTT v5; a 3.1.1 broker has no way to refuse). A publish that paho
or the broker would choke on never reaches paho: PublishInvalid, which delivery treats
like a refusal (final: sending it again cannot help). A publish paho had no room for
fails with OutgoingQueueFull: not a refusal, it may be sent again once the queue drains.
"""

from __future__ import annotations

from typing import Any

# A v5 reason code for what the link refuses itself (MQTT v5: 0x90 Topic Name invalid).
TOPIC_NAME_INVALID = 0x90


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


class OutgoingQueueFull(Exception):  # noqa: N818 - names the condition, like QueueFull
    """paho's outgoing queue is full (MAX_QUEUED_PUBLISHES unsent: the broker is slow or
    away), so the publish was not taken. Internal to the daemon, never a reply's error
    code (that is ErrorCode.BUSY, the device's own queue): delivery tries again later."""

    def __init__(self) -> None:
        super().__init__("too many unsent MQTT messages")


def refusal(reason_code: Any) -> PublishRefused | None:
    """None for a success reason code (v3.1.1 PUBACKs carry none), else the refusal."""
    if not getattr(reason_code, "is_failure", False):
        return None
    return PublishRefused(int(reason_code.value), str(reason_code))
