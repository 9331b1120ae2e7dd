"""Task requests as they arrive on MQTT: size check, JSON parse, typed validation.

Everything a client can get wrong is caught here and turned into an EdgeAgentError
with a protocol code, before the task takes a queue slot. Nothing else escapes: a
payload the daemon cannot parse must still end in a reply and an ack, never in an
exception that leaves the message unacked (it would hold one of the broker's
in-flight slots for good).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.protocol.overflow_policy import OverflowPolicy
from edgeagent.protocol.reply_policy import MQTT_TOPIC_MAX_BYTES, topic_name_problem

_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
ID_RE = re.compile(_ID_PATTERN)
LATEST = "latest"  # not a task id: held/latest/confirm names the device's newest hold


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class Request(BaseModel):
    """A task request. Exactly one of input/messages; at most one of schema/action/actions."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=_ID_PATTERN)
    input: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    action: str | None = None
    actions: list[str] | None = Field(default=None, min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    deadline_s: float | None = Field(default=None, gt=0, le=86400)
    priority: int = Field(default=0, ge=-100, le=100)
    # Where the reply may go is the device's reply policy's decision
    # (protocol.reply_policy.check_reply_topic); here only what is never a topic.
    reply_to: str | None = None
    overflow: OverflowPolicy | None = None

    @field_validator("id")
    @classmethod
    def _not_latest(cls, value: str) -> str:
        if value == LATEST:
            raise ValueError(f"{LATEST!r} is reserved: held/{LATEST}/... names the newest hold")
        return value

    @field_validator("reply_to")
    @classmethod
    def _a_topic_name(cls, value: str | None) -> str | None:
        problem = None if value is None else topic_name_problem(value)
        if problem is not None:
            raise ValueError(f"reply_to {problem}")
        return value

    @model_validator(mode="after")
    def _one_of_each(self) -> Request:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of 'input' or 'messages'")
        chosen = [k for k in ("schema_", "action", "actions") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError("give at most one of 'schema', 'action', 'actions'")
        return self

    @property
    def action_names(self) -> list[str] | None:
        """Allowed actions: one, a list, or None meaning the whole catalog."""
        if self.action is not None:
            return [self.action]
        return self.actions

    @property
    def content(self) -> str | list[dict[str, str]]:
        if self.input is not None:
            return self.input
        assert self.messages is not None
        return [m.model_dump() for m in self.messages]

    def fingerprint(self) -> str:
        """Hash of what the task asks (not its id), to spot an id reused for other work."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"id", "reply_to", "deadline_s"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _load_json(payload: bytes) -> Any:
    """Strict JSON: no NaN/Infinity. ValueError (bad JSON or UTF-8, an integer of more
    than 4300 digits) or RecursionError (nesting deeper than the interpreter's stack)."""
    return json.loads(payload, parse_constant=_no_constant)


def parse_request(payload: bytes, max_bytes: int) -> Request:
    """The validated request. Raises EdgeAgentError and nothing else.

    A payload over max_bytes is refused (PAYLOAD_TOO_LARGE) before anything reads it.
    """
    if len(payload) > max_bytes:
        raise EdgeAgentError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes, the limit is {max_bytes}",
        )
    try:
        data = _load_json(payload)
    except RecursionError as exc:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "payload is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "payload must be a JSON object")
    try:
        return Request.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(request)'}: {e['msg']}" for e in exc.errors()
        )
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, problems) from exc
    except RecursionError as exc:  # a deep inline schema can still reach pydantic's limit
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "request is nested too deeply") from exc


def salvage(payload: bytes, max_bytes: int) -> tuple[str | None, str | None]:
    """Best-effort (id, reply_to) of a request that failed validation, for the error reply.

    Never raises, and never reads a payload over max_bytes. The reply_to it returns is
    only a string of topic length: check it with `check_reply_topic` before using it.
    """
    if len(payload) > max_bytes:
        return None, None
    try:
        data = _load_json(payload)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    raw_id = data.get("id")
    task_id = raw_id if isinstance(raw_id, str) and re.fullmatch(_ID_PATTERN, raw_id) else None
    reply_to = data.get("reply_to")
    if not isinstance(reply_to, str) or not 0 < len(reply_to) <= MQTT_TOPIC_MAX_BYTES:
        reply_to = None
    return task_id, reply_to
