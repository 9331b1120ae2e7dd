"""Where a caller may send the reply: the reply-topic policy.

A request names its reply address (`reply_to`, or the MQTT v5 Response Topic), and the
device publishes there with its own credentials, which the broker's ACL trusts. Without
a policy anyone allowed to publish one task could make a device publish on any topic:
an actuator topic, another device's status, a wildcard (paho raises), a control
character (mosquitto drops the connection and paho resends forever).

`check_reply_topic` is the one place that decides. Always refused, whatever the
configuration:

* anything but a non-empty string of at most 65,535 bytes of UTF-8 (the MQTT limit) and
  of at most `max_bytes`;
* `$` topics (`$SYS/...`, `$share/...`), the wildcards `+` and `#`;
* control characters (C0, DEL, C1), surrogates and Unicode non-characters;
* every topic under the fleet's prefix except this device's own results topics: no
  device's `tasks`, `actions/...`, `status`, `heartbeat` or `errors`.

Otherwise the topic must lie under one of the allowed reply prefixes (`[mqtt]
reply_prefixes`, default `replies`, so `mosquitto_rr -e replies/<me>` works).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeagent.errors import EdgeAgentError, ErrorCode

MQTT_TOPIC_MAX_BYTES = 65535  # the length field of an MQTT UTF-8 string
DEFAULT_REPLY_PREFIXES = ("replies",)
DEFAULT_REPLY_MAX_BYTES = 256


def _is_noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _char_problem(char: str) -> str | None:
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"must not contain control characters (U+{code:04X})"
    if 0xD800 <= code <= 0xDFFF:
        return f"must not contain surrogates (U+{code:04X})"
    if _is_noncharacter(code):
        return f"must not contain Unicode non-characters (U+{code:04X})"
    if char in "+#":
        return "must not contain the wildcards '+' or '#'"
    return None


def topic_name_problem(topic: object, *, max_bytes: int = MQTT_TOPIC_MAX_BYTES) -> str | None:
    """Why `topic` cannot be a topic to publish on (None when it can).

    The checks every reply address and every configured prefix must pass; they do not
    depend on the configuration.
    """
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    problem = next(filter(None, map(_char_problem, topic)), None)
    if problem is not None:
        return problem
    if topic.startswith("$"):
        return "must not be a '$' topic"
    size = len(topic.encode("utf-8"))
    limit = min(max_bytes, MQTT_TOPIC_MAX_BYTES)
    if size > limit:
        return f"is {size} bytes of UTF-8, the limit is {limit}"
    return None


def _under(topic: str, prefix: str) -> bool:
    """Whether topic is prefix or lies below it (whole topic levels only)."""
    return topic == prefix or topic.startswith(f"{prefix}/")


@dataclass(frozen=True, slots=True)
class ReplyPolicy:
    """Where replies may go; build it with `Config.reply_policy()`."""

    fleet_prefix: str  # [mqtt] topic_prefix: every device's topics live below it
    device: str  # this device's id: its own results topics are reply topics
    allowed_prefixes: tuple[str, ...] = DEFAULT_REPLY_PREFIXES
    max_bytes: int = DEFAULT_REPLY_MAX_BYTES

    def refusal(self, topic: object) -> str | None:
        """Why a reply may not go to `topic` (None when it may)."""
        problem = topic_name_problem(topic, max_bytes=self.max_bytes)
        if problem is not None:
            return problem
        assert isinstance(topic, str)  # topic_name_problem checked it
        if _under(topic, self.fleet_prefix):
            if topic.startswith(f"{self.fleet_prefix}/{self.device}/results/"):
                return None
            return (
                f"must not be a topic under the fleet prefix '{self.fleet_prefix}'"
                " (only this device's results topics are reply topics)"
            )
        if any(_under(topic, prefix) for prefix in self.allowed_prefixes):
            return None
        if not self.allowed_prefixes:
            return "must not be given: no reply prefixes are allowed on this device"
        allowed = ", ".join(f"'{p}/...'" for p in self.allowed_prefixes)
        return f"must lie under an allowed reply prefix ({allowed})"


def check_reply_topic(topic: object, policy: ReplyPolicy, *, field: str = "reply_to") -> str:
    """The topic, if the policy lets a reply go there; else INVALID_REQUEST.

    Use it for `reply_to` and for the MQTT v5 Response Topic (field="response_topic").
    Never raises anything but EdgeAgentError.
    """
    problem = policy.refusal(topic)
    if problem is not None:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, f"{field} {problem}", field=field)
    assert isinstance(topic, str)
    return topic
