"""Replies: their bodies and where they go.

Route: the MQTT v5 Response Topic (with its Correlation Data echoed, so mosquitto_rr
works), else the request's `reply_to` (for MQTT 3.1.1 clients), else
<prefix>/<device>/results/<id>. A request too broken to name an id or a reply address
is answered on <prefix>/<device>/errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeagent.errors import EdgeAgentError
from edgeagent.protocol.topics import Topics


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    topic: str
    correlation_data: bytes | None = None


def route(
    topics: Topics,
    task_id: str | None,
    *,
    response_topic: str | None,
    correlation_data: bytes | None,
    reply_to: str | None,
) -> ReplyRoute:
    if response_topic:
        return ReplyRoute(response_topic, correlation_data)
    if reply_to:
        return ReplyRoute(reply_to)
    if task_id:
        return ReplyRoute(topics.result(task_id))
    return ReplyRoute(topics.errors)


def ok_reply(
    task_id: str,
    device: str,
    output: Any,
    *,
    usage: dict[str, int],
    timing: dict[str, float],
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": task_id,
        "status": "ok",
        "output": output,
        "usage": usage,
        "timing": timing,
        "device": device,
    }
    if context is not None:
        body["context"] = context
    return body


def error_reply(task_id: str | None, device: str, error: EdgeAgentError) -> dict[str, Any]:
    return {"id": task_id, "status": "error", "error": error.to_dict(), "device": device}
