"""A hold as the store keeps it, and the payloads built from it.

A hold's life (holdstore.py keeps it, desk.py moves it on):

    opening (written before its task's reply is stored) -> pending (notice published,
    retained, on held/<task_id>) -> resolved (confirmed | edited | rejected | expired)

A resolved hold owes the broker, in this order, what `Confirmation` states track like
the task store's: the action message (confirmed and edited only), the follow-up reply to
the original requester, and the cleared notice. Everything published is a function of
the stored record, so a restart publishes the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from edgeagent.protocol.reply import ActionMessage, OkReply, ReplyRoute, encode
from edgeagent.service.pipeline.task_records import Confirmation

INPUT_SHOWN = 200  # characters of the task's input in the notice


class HoldState(StrEnum):
    OPENING = "opening"  # the task's reply is being stored: not a hold yet
    PENDING = "pending"  # waiting for an operator
    RESOLVED = "resolved"


class Decision(StrEnum):
    CONFIRMED = "confirmed"
    EDITED = "edited"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def dispatches(self) -> bool:
        return self in (Decision.CONFIRMED, Decision.EDITED)


def iso(ts: float) -> str:
    """ISO 8601 UTC to the second, as every hold payload says times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Resolved:
    decision: Decision
    by: str | None
    at: float  # wall clock
    final_args: dict[str, Any] | None  # confirmed: the model's args; edited: the operator's
    # The confirm/reject message that decided it (commands.py `Command.digest`): its
    # redelivery after a crash is recognised as the same message.
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"decision": str(self.decision), "by": self.by, "at": iso(self.at)}
        if self.decision is Decision.EDITED:
            body["args"] = self.final_args
        return body


@dataclass(frozen=True, slots=True)
class Draft:
    """A hold about to be written, from a task's held reply (see `draft`)."""

    task_id: str
    action: str
    args: dict[str, Any]
    confidence: float | None
    action_topic: str
    notice: str  # the retained payload on held/<task_id>
    reply: str  # the task's reply, as the requester got it
    routes: tuple[ReplyRoute, ...]  # where the task's reply went
    text: str  # the task's whole input (for the learner; dropped once resolved)
    held_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class HoldRecord:
    draft: Draft
    state: HoldState
    seq: int  # creation order: `latest` is the pending hold with the highest
    notice_state: Confirmation  # pending: its notice published; resolved: its clearing
    resolved: Resolved | None = None
    action_state: Confirmation | None = None  # None: nothing to dispatch
    followup_state: Confirmation | None = None

    @property
    def task_id(self) -> str:
        return self.draft.task_id

    @property
    def owes(self) -> bool:
        """Something of it is still to be confirmed by the broker."""
        states = (self.notice_state, self.action_state, self.followup_state)
        return Confirmation.PENDING in states

    @property
    def dispatched(self) -> bool:
        return self.action_state is Confirmation.CONFIRMED

    def action_message(self, device: str) -> str:
        assert self.resolved is not None
        assert self.resolved.final_args is not None
        output = {"action": self.draft.action, "args": self.resolved.final_args}
        return encode(ActionMessage(self.task_id, device, output))


def draft(
    reply: OkReply,
    *,
    device: str,
    text: str,
    routes: tuple[ReplyRoute, ...],
    held_at: float,
    ttl_s: float,
) -> Draft | None:
    """The hold of a held `dispatch = true` action answer; None for any other reply."""
    info = reply.action
    if info is None or info.held is None or info.held.topic is None:
        return None
    output = reply.output
    if not isinstance(output, dict) or not isinstance(output.get("args"), dict):
        return None
    expires_at = held_at + ttl_s
    notice: dict[str, Any] = {
        "task_id": reply.id,
        "device": device,
        "action": str(output["action"]),
        "args": output["args"],
        "confidence": info.to_json()["confidence"],
        "act_confidence": None if info.act_confidence is None else round(info.act_confidence, 4),
        "why": str(info.held.reason),
    }
    if info.reason is not None:
        notice["reason"] = info.reason
    notice |= {"input": text[:INPUT_SHOWN], "held_at": iso(held_at), "expires_at": iso(expires_at)}
    return Draft(
        task_id=reply.id,
        action=str(output["action"]),
        args=output["args"],
        confidence=info.confidence,
        action_topic=info.held.topic,
        notice=dumps(notice),
        reply=encode(reply),
        routes=routes,
        text=text,
        held_at=held_at,
        expires_at=expires_at,
    )


def followup(record: HoldRecord, *, degraded: bool) -> str:
    """The requester's second reply: the first with `dispatched` as the broker answered,
    `output.args` the dispatched arguments, and `resolution` after `held`."""
    resolved = record.resolved
    assert resolved is not None
    body: dict[str, Any] = {}
    for key, value in json.loads(record.draft.reply).items():
        if key == "output" and isinstance(value, dict) and resolved.final_args is not None:
            value = {**value, "args": resolved.final_args}  # noqa: PLW2901 - the reply's new value
        if key == "dispatched":
            body[key] = record.dispatched
            if record.action_state is Confirmation.REFUSED:
                body["dispatch_refused"] = {"topic": record.draft.action_topic}
            continue
        body[key] = value
        if key == "held":
            body["resolution"] = resolved.to_json()
    body.setdefault("resolution", resolved.to_json())
    if degraded:
        body["exactly_once"] = False
    return dumps(body)


def answer(record: HoldRecord) -> str:
    """The operator's answer to the confirm or reject that resolved the hold."""
    assert record.resolved is not None
    return dumps(
        {
            "ok": True,
            "task_id": record.task_id,
            "decision": str(record.resolved.decision),
            "dispatched": record.dispatched,
        }
    )


def heartbeat_entry(record: HoldRecord) -> dict[str, Any]:
    """`latest_hold` in the heartbeat."""
    confidence = record.draft.confidence
    return {
        "task_id": record.task_id,
        "action": record.draft.action,
        "args": record.draft.args,
        "confidence": None if confidence is None else round(confidence, 4),
        "expires_at": iso(record.draft.expires_at),
    }


def dumps(body: Any) -> str:
    """JSON text that always has a UTF-8 form (protocol.reply.encode's rule)."""
    text = json.dumps(body, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the model or an operator
        return json.dumps(body, ensure_ascii=True)
    return text


def resolved_record(record: HoldRecord, resolved: Resolved) -> HoldRecord:
    """`record` as the store has it once `resolved` is committed (holdstore.resolve)."""
    return HoldRecord(
        dataclasses.replace(record.draft, text=""),
        HoldState.RESOLVED,
        record.seq,
        Confirmation.PENDING,
        resolved,
        Confirmation.PENDING if resolved.decision.dispatches else None,
        Confirmation.PENDING,
    )
