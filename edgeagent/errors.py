"""Typed errors: every failure a client can see has one code from ErrorCode.

The codes are part of the public protocol (docs/protocol.md); add, never rename.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNKNOWN_ACTION = "UNKNOWN_ACTION"
    SCHEMA_UNSUPPORTED = "SCHEMA_UNSUPPORTED"
    CONTEXT_BUDGET = "CONTEXT_BUDGET"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    BUSY = "BUSY"
    OUTPUT_INVALID = "OUTPUT_INVALID"
    CONFIG_INVALID = "CONFIG_INVALID"
    TIMEOUT = "TIMEOUT"
    INTERNAL = "INTERNAL"
    # The broker refused to take a reply or action message (MQTT v5 PUBACK reason code
    # >= 0x80, e.g. 135 "not authorized" from an ACL). Reported on the errors topic.
    REPLY_REFUSED = "REPLY_REFUSED"
    # A confirm or reject of a held action (docs/protocol.md, "Held actions"): no such
    # hold, one already confirmed or rejected, one that expired.
    HOLD_UNKNOWN = "HOLD_UNKNOWN"
    HOLD_RESOLVED = "HOLD_RESOLVED"
    HOLD_EXPIRED = "HOLD_EXPIRED"

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later: such an error is never replayed
        to a client's re-send of the task (it runs again), only to broker redeliveries."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorCode.DEADLINE_EXCEEDED, ErrorCode.BUSY, ErrorCode.INTERNAL, ErrorCode.CONTEXT_BUDGET}
)


class EdgeAgentError(Exception):
    """An error with a protocol code and a message meant for the client."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class TaskHandedBack(Exception):  # noqa: N818 - names what happened, like StopIteration
    """The task was stopped unanswered (shutdown) and goes back to the broker.

    Not an EdgeAgentError: it never becomes a reply. The daemon leaves the message
    unacked so the broker delivers it again after the restart.
    """
