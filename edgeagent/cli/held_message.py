"""A device's retained pending hold (`<prefix>/<device>/held/<task id>`), read defensively.

Any device can retain anything on its own `held/...` topics (the broker ACL lets it write
there, and only there). What the CLI shows is taken from the topic first (the ACL vouches
for the device in it) and from the payload only after it passed cli/untrusted_json.py: a
small, shallow JSON object whose fields are validated one by one, a bad one left out and
named. Every text is made printable (cli/terminal_text.py) before it reaches a terminal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from edgeagent.cli.terminal_text import printable
from edgeagent.cli.untrusted_json import parse_object, validate_dropping

# A real hold is a few hundred bytes: the arguments and the input's first 200 characters.
MAX_HELD_BYTES = 16 * 1024
MAX_HELD_DEPTH = 8
MAX_ARGS_TEXT = 400  # characters of the arguments' JSON kept for the table and --json

Text = Annotated[str, Field(max_length=1024)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class HeldPayload(BaseModel):
    """The fields of a pending hold (docs/protocol.md, "Held actions")."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    task_id: Text | None = None
    device: Text | None = None
    action: Text | None = None
    args: dict[str, Any] | None = None
    confidence: Probability | None = None
    act_confidence: Probability | None = None
    why: Text | None = None
    reason: Text | None = None
    input: Text | None = None
    held_at: Annotated[str, Field(max_length=64)] | None = None
    expires_at: Annotated[str, Field(max_length=64)] | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """One pending hold as the CLI shows it: every text printable, bounded."""

    device: str
    task_id: str
    action: str | None
    args: str | None  # compact JSON, ASCII only, cut to MAX_ARGS_TEXT
    confidence: float | None
    why: str | None
    reason: str | None
    input: str | None
    held_at: str | None
    expires_at: str | None
    problem: str | None = None


def _args_text(args: dict[str, Any] | None) -> str | None:
    if args is None:
        return None
    # ensure_ascii: no control, bidi or invisible character survives as itself.
    return printable(json.dumps(args, ensure_ascii=True, separators=(",", ":")), MAX_ARGS_TEXT)


def read_hold(device: str, task_id: str, payload: bytes) -> Hold:
    """The hold retained on `<prefix>/<device>/held/<task_id>` (payload not empty)."""
    data, problem = parse_object(
        payload, what="hold", max_bytes=MAX_HELD_BYTES, max_depth=MAX_HELD_DEPTH
    )
    held, dropped = validate_dropping(HeldPayload, data) if data is not None else (None, [])
    if data is not None and held is None:
        problem = "hold unreadable"
    notes = [problem] if problem else []
    if dropped:
        notes.append("bad hold field: " + ", ".join(dropped))
    held = held or HeldPayload()
    # The topic names the hold; a payload that claims another one is shown, and said.
    if held.device is not None and held.device != device:
        notes.append(f"payload names device {printable(held.device, 32)}")
    if held.task_id is not None and held.task_id != task_id:
        notes.append(f"payload names task {printable(held.task_id, 32)}")

    def text(value: str | None, limit: int = 64) -> str | None:
        return None if value is None else printable(value, limit)

    return Hold(
        device=printable(device),
        task_id=printable(task_id),
        action=text(held.action),
        args=_args_text(held.args),
        confidence=held.confidence,
        why=text(held.why, 32),
        reason=text(held.reason, 200),
        input=text(held.input, 200),
        held_at=text(held.held_at, 40),
        expires_at=text(held.expires_at, 40),
        problem=printable("; ".join(notes), 160) if notes else None,
    )
