"""An incoming task message read: its request (with its id) and where its reply goes.

Nothing here answers: what cannot be read comes back as `Unreadable`, with what could
be salvaged for the refusal's address, and admission refuses it (refusals.py).

Replies go only where the reply policy allows (protocol.reply_policy): a request that
names a refused address (its `reply_to` or its MQTT v5 Response Topic) is answered
INVALID_REQUEST on the device's errors topic, and nothing is ever published to it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ReplyRoute, route
from edgeagent.protocol.reply_policy import ReplyPolicy, check_reply_topic
from edgeagent.protocol.request import Request, parse_request, salvage
from edgeagent.protocol.topics import Topics


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message that is no valid request: why, and its id and reply_to if salvaged."""

    error: EdgeAgentError
    task_id: str | None = None
    reply_to: str | None = None


def derived_id(message: Incoming) -> str:
    """The id of a task sent without one: the same for every delivery of that message
    (payload + Response Topic + Correlation Data), so a redelivery is recognised."""
    digest = hashlib.sha256()
    for part in (
        message.payload,
        (message.response_topic or "").encode("utf-8", "surrogatepass"),
        message.correlation_data or b"",
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def read_request(message: Incoming, limit: int) -> Request | Unreadable:
    """The request with its id (given, or derived from the message)."""
    if message.oversize is not None:  # the link dropped it: never read
        return Unreadable(
            EdgeAgentError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload is {message.oversize} bytes, the limit is {limit}",
            )
        )
    try:
        request = parse_request(message.payload, limit)
    except EdgeAgentError as exc:
        # salvage reads nothing over the limit; its reply_to is policy-checked by the
        # caller like any other (ReplyAddresses.route_or_errors).
        task_id, reply_to = salvage(message.payload, limit)
        return Unreadable(exc, task_id, reply_to)
    if "id" not in request.model_fields_set:
        request = request.model_copy(update={"id": derived_id(message)})
    return request


class ReplyAddresses:
    """Where a request's reply goes, by the reply policy (replaced on a reload)."""

    def __init__(self, topics: Topics, policy: ReplyPolicy) -> None:
        self._topics = topics
        self.policy = policy

    @property
    def errors(self) -> ReplyRoute:
        """The device's errors topic: for requests whose own address is refused."""
        return ReplyRoute(self._topics.errors)

    def route(self, message: Incoming, task_id: str | None, reply_to: str | None) -> ReplyRoute:
        """The reply's address; INVALID_REQUEST when the request names an address (either
        of them) the reply policy refuses."""
        if message.response_topic is not None:
            check_reply_topic(message.response_topic, self.policy, field="response_topic")
        if reply_to is not None:
            check_reply_topic(reply_to, self.policy, field="reply_to")
        return route(
            self._topics,
            task_id,
            response_topic=message.response_topic,
            correlation_data=message.correlation_data,
            reply_to=reply_to,
        )

    def route_or_errors(
        self, message: Incoming, task_id: str | None, reply_to: str | None
    ) -> ReplyRoute:
        """Where the refusal of a request that could not be read goes: its address if the
        policy allows it, else the errors topic (a salvaged id has the id pattern, so its
        results topic is always a valid topic of this device)."""
        try:
            return self.route(message, task_id, reply_to)
        except EdgeAgentError:
            return self.errors
