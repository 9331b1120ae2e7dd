"""Replies: their typed bodies, their JSON, and where they go.

Route: the MQTT v5 Response Topic (with its Correlation Data echoed, so mosquitto_rr
works), else the request's `reply_to` (for MQTT 3.1.1 clients), else
<prefix>/<device>/results/<id>. A request too broken to name an id or a reply address
is answered on <prefix>/<device>/errors.

The JSON is the public protocol (docs/protocol.md): `to_json` builds exactly the keys,
in exactly the order, that clients have always received.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.hold import Hold, rounded_confidence
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


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
        }


@dataclass(frozen=True, slots=True)
class Timing:
    """Milliseconds, rounded to 0.1 ms as they are sent."""

    queue_ms: float
    prompt_ms: float
    decode_ms: float
    total_ms: float
    screen_ms: float = 0.0  # the instruction screen, when it ran (inference/screen.py)

    def to_json(self) -> dict[str, float]:
        body = {
            "queue_ms": self.queue_ms,
            "prompt_ms": self.prompt_ms,
            "decode_ms": self.decode_ms,
            "total_ms": self.total_ms,
        }
        if self.screen_ms:
            body["screen_ms"] = self.screen_ms
        return body


@dataclass(frozen=True, slots=True)
class ContextUse:
    budget: int  # the context size the answer was produced in
    truncated: int  # input tokens dropped to fit
    chunks: int  # model runs (map-reduce), 1 when the input fit

    def to_json(self) -> dict[str, int]:
        return {"budget": self.budget, "truncated": self.truncated, "chunks": self.chunks}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: ErrorCode
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, error: EdgeAgentError) -> ErrorInfo:
        return cls(error.code, error.message, dict(error.details))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            body["details"] = dict(self.details)
        return body


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """What an action reply says besides its output: how sure the model was, whether the
    action went out, and the model's reason (`[model] reason`)."""

    confidence: float | None  # the model's probability for the chosen action; None: unknown
    dispatched: bool  # published on <prefix>/<device>/actions/<name>
    held: Hold | None = None
    reason: str | None = None
    # Calibrated P(act at all) over the whole catalog (inference/gate.py); None when
    # the catalog has no "nothing to do" action.
    act_confidence: float | None = None
    # The instruction screen's P(the input tries to instruct the device)
    # (inference/screen.py); None when it did not run.
    instruction_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "confidence": rounded_confidence(self.confidence),
            "dispatched": self.dispatched,
        }
        if self.act_confidence is not None:  # the catalog has a "nothing to do" action
            body["act_confidence"] = rounded_confidence(self.act_confidence)
        if self.instruction_score is not None:  # screened: an acting answer
            body["instruction_score"] = rounded_confidence(self.instruction_score)
        if self.held is not None:
            body["held"] = self.held.to_json()
        if self.reason is not None:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True, slots=True)
class OkReply:
    id: str
    output: Any  # the validated answer (any JSON value)
    usage: Usage
    timing: Timing
    device: str
    context: ContextUse | None = None
    # False while the task store is failing: the reply may be sent again after a restart.
    exactly_once: bool = True
    action: ActionInfo | None = None  # action tasks only
    cut_short: bool = False  # the answer was ended early near max_tokens (still valid)

    @property
    def ok(self) -> bool:
        return True

    @property
    def held(self) -> bool:
        return self.action is not None and self.action.held is not None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": "ok",
            "output": self.output,
        }
        if self.action is not None:
            body |= self.action.to_json()
        if self.cut_short:
            body["cut_short"] = True
        body |= {
            "usage": self.usage.to_json(),
            "timing": self.timing.to_json(),
            "device": self.device,
        }
        if self.context is not None:
            body["context"] = self.context.to_json()
        if not self.exactly_once:
            body["exactly_once"] = False
        return body


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: str | None  # None when the request was too broken to name one
    error: ErrorInfo
    device: str
    exactly_once: bool = True

    @classmethod
    def of(cls, task_id: str | None, device: str, error: EdgeAgentError) -> ErrorReply:
        return cls(task_id, ErrorInfo.of(error), device)

    @property
    def ok(self) -> bool:
        return False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": "error",
            "error": self.error.to_json(),
            "device": self.device,
        }
        if not self.exactly_once:
            body["exactly_once"] = False
        return body


Reply = OkReply | ErrorReply


def encode(body: Reply | ActionMessage) -> str:
    """The payload text of a reply or an action message; always valid UTF-8.

    Error messages can quote what a caller sent (an unknown action's name), and a JSON
    string may hold a lone surrogate, which has no UTF-8 form: such a body is sent with
    every non-ASCII character escaped (`\\udc80`), still the same JSON value.
    """
    text = json.dumps(body.to_json(), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body.to_json(), ensure_ascii=True)
    return text


@dataclass(frozen=True, slots=True)
class ActionMessage:
    """What a `dispatch = true` action publishes on <prefix>/<device>/actions/<name>."""

    task_id: str
    device: str
    output: Mapping[str, Any]  # {"action": name, "args": {...}}, validated

    @property
    def name(self) -> str:
        return str(self.output["action"])

    def to_json(self) -> dict[str, Any]:
        return {"id": self.task_id, "device": self.device, **self.output}
