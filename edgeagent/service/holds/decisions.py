"""What a command decides on a pending hold, why a hold that is not pending is none, the
one journald line every resolution gets, and what the learner is told of it."""

from __future__ import annotations

import structlog

from edgeagent.config import Config
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.service.holds import records
from edgeagent.service.holds.commands import Command, check_args, edits
from edgeagent.service.holds.records import Decision, HoldRecord, HoldState, Resolved
from edgeagent.service.holds.resolution import HoldResolution

log = structlog.get_logger("edgeagent.service.holds.decisions")


def not_pending(record: HoldRecord | None, task_id: str) -> EdgeAgentError | None:
    """HOLD_UNKNOWN, HOLD_RESOLVED (which decision, by whom) or HOLD_EXPIRED; None for
    a pending hold."""
    if record is None or record.state is HoldState.OPENING:
        return EdgeAgentError(ErrorCode.HOLD_UNKNOWN, f"no hold {task_id!r}")
    resolved = record.resolved
    if record.state is HoldState.PENDING or resolved is None:
        return None
    details = {
        "decision": str(resolved.decision),
        "by": resolved.by,
        "at": records.iso(resolved.at),
    }
    if resolved.decision is Decision.EXPIRED:
        return EdgeAgentError(ErrorCode.HOLD_EXPIRED, f"hold {task_id!r} expired", **details)
    by = f" by {resolved.by}" if resolved.by else ""
    return EdgeAgentError(
        ErrorCode.HOLD_RESOLVED, f"hold {task_id!r} was {resolved.decision}{by}", **details
    )


def decide(cfg: Config, record: HoldRecord, command: Command, now: float) -> Resolved:
    """Rejected; or confirmed, edited when the operator's arguments differ from the
    model's (checked against the action's schema in the running catalog)."""
    if command.verb == "reject":
        return Resolved(Decision.REJECTED, command.by, now, None, command.digest)
    action = cfg.action(record.draft.action)
    if action is None or not action.dispatch:
        raise EdgeAgentError(
            ErrorCode.UNKNOWN_ACTION,
            f"{record.draft.action!r} is no longer a dispatch action of the catalog",
        )
    final = record.draft.args
    if command.args is not None:
        check_args(action, command.args)
        if edits(record.draft.args, command.args):
            return Resolved(Decision.EDITED, command.by, now, command.args, command.digest)
    return Resolved(Decision.CONFIRMED, command.by, now, final, command.digest)


def log_resolution(record: HoldRecord, resolved: Resolved, note: str | None = None) -> None:
    """`hold resolved`: `journalctl -u edgeagent EVENT="hold resolved"` (operations.md)."""
    changed = edits(record.draft.args, resolved.final_args or record.draft.args)
    log.info(
        "hold resolved",
        task_id=record.task_id,
        action=record.draft.action,
        decision=str(resolved.decision),
        by=resolved.by,
        edits=changed,
        held_for_s=round(resolved.at - record.draft.held_at, 1),
        **({"note": note} if note is not None else {}),
    )


def learned(record: HoldRecord, resolved: Resolved, text: str | bool) -> HoldResolution:
    """What the learner is told of a committed resolution; `text` is the hold's input as
    the store returned it when resolving (not a str when the store failed: told as "")."""
    return HoldResolution(
        task_id=record.task_id,
        text=text if isinstance(text, str) else "",
        action=record.draft.action,
        args=record.draft.args,
        decision=str(resolved.decision),
        final_args=resolved.final_args,
        by=resolved.by,
        at=resolved.at,
    )
