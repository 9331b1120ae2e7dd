"""An operator's confirm or reject message, read defensively.

Anyone who can publish on held/+/confirm is untrusted until the broker's ACL says
otherwise, so a command is checked before anything is looked up: its size (at most
MAX_COMMAND_BYTES, never read beyond), strict JSON, an object with only the keys its
verb allows, `by` a name of 1-64 printable characters, `args` an object, `note` at most
200 characters, `task_id` a task id. Every failure is one EdgeAgentError
(PAYLOAD_TOO_LARGE or INVALID_REQUEST); nothing else escapes.

Edited arguments are checked against the action's schema from the catalog, as the
model's are (closed objects, RE2 patterns: schema_validator.py): an argument the schema
does not name is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from edgeagent.config import ActionConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.schema_validator import final_validator
from edgeagent.inference.tighten import close_objects
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.reply import ReplyRoute
from edgeagent.protocol.reply_policy import ReplyPolicy, check_reply_topic
from edgeagent.protocol.request import ID_RE, LATEST

MAX_COMMAND_BYTES = 16 * 1024
NAME_MAX = 64
NOTE_MAX = 200
PROBLEM_SHOWN = 200  # characters of a validation message quoted back


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    by: StrictStr = Field(min_length=1, max_length=NAME_MAX)
    task_id: StrictStr | None = None

    @field_validator("by")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable characters only")
        return value

    @field_validator("task_id")
    @classmethod
    def _an_id(cls, value: str | None) -> str | None:
        if value is not None and (not ID_RE.match(value) or value == LATEST):
            raise ValueError("must be a task id")
        return value


class _Confirm(_Body):
    args: dict[str, Any] | None = None


class _Reject(_Body):
    note: StrictStr | None = Field(default=None, max_length=NOTE_MAX)


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # "confirm" | "reject"
    target: str  # the topic's task id level: a task id or "latest"
    by: str
    task_id: str | None  # the payload's, if it names one
    args: dict[str, Any] | None = None  # confirm: edited arguments
    note: str | None = None  # reject
    # Recognises this message when the broker delivers it again after a crash (MQTT
    # keeps a message's packet id across redeliveries); see desk.py.
    digest: str = ""

    @property
    def latest(self) -> bool:
        return self.target == LATEST


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e999 parses to inf, which no JSON encoder may send on (an action's argument).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def digest(message: Incoming) -> str:
    hashed = hashlib.sha256()
    for part in (
        message.topic.encode("utf-8", "surrogatepass"),
        message.payload,
        (message.response_topic or "").encode("utf-8", "surrogatepass"),
        message.correlation_data or b"",
        str(message.mid).encode(),
    ):
        hashed.update(len(part).to_bytes(8, "big"))
        hashed.update(part)
    return hashed.hexdigest()[:32]


def parse_command(message: Incoming, target: str, verb: str) -> Command:
    """The command, or EdgeAgentError (PAYLOAD_TOO_LARGE, INVALID_REQUEST)."""
    # The link dropped one over [mqtt] max_payload_bytes unread (`oversize`).
    size = message.oversize if message.oversize is not None else len(message.payload)
    if message.oversize is not None or size > MAX_COMMAND_BYTES:
        raise EdgeAgentError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"payload is {size} bytes, the limit is {MAX_COMMAND_BYTES}",
        )
    if target != LATEST and not ID_RE.match(target):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "the topic names no task id")
    try:
        data = json.loads(message.payload, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as exc:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "payload is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "payload must be a JSON object")
    try:
        body = (_Confirm if verb == "confirm" else _Reject).model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, problems[:PROBLEM_SHOWN]) from exc
    except RecursionError as exc:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "payload is nested too deeply") from exc
    if body.task_id is not None and target not in (LATEST, body.task_id):
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"task_id {body.task_id!r} is not the topic's {target!r}"
        )
    return Command(
        verb=verb,
        target=target,
        by=body.by,
        task_id=body.task_id,
        args=body.args if isinstance(body, _Confirm) else None,
        note=body.note if isinstance(body, _Reject) else None,
        digest=digest(message),
    )


def check_args(action: ActionConfig, args: dict[str, Any]) -> None:
    """Edited arguments against the action's schema; INVALID_REQUEST if they do not fit."""
    known = action.schema_.get("properties")
    unknown = sorted(set(args) - set(known if isinstance(known, dict) else {}))
    if unknown:
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST,
            f"args: not in the schema of {action.name}: {unknown}"[:PROBLEM_SHOWN],
        )
    try:
        error = next(iter(final_validator(close_objects(action.schema_)).iter_errors(args)), None)
    except RecursionError as exc:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "args are nested too deeply") from exc
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST,
            f"args{'/' + where if where else ''}: {error.message}"[:PROBLEM_SHOWN],
        )


def edits(model: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """The argument names whose values an operator changed (added, dropped or set)."""

    def shown(args: dict[str, Any], key: str) -> str | None:
        # As JSON: 1, 1.0 and true are equal in Python, not to an actuator.
        return json.dumps(args[key], sort_keys=True) if key in args else None

    return sorted(k for k in {*model, *final} if shown(model, k) != shown(final, k))


def answer_route(message: Incoming, policy: ReplyPolicy) -> ReplyRoute | None:
    """The operator's answer address: an MQTT v5 response topic the reply policy allows
    (INVALID_REQUEST, and nothing resolved, for one it refuses); None without one."""
    if message.response_topic is None:
        return None
    check_reply_topic(message.response_topic, policy, field="response_topic")
    return ReplyRoute(message.response_topic, message.correlation_data)
