"""What the fleet view reads from another device's retained heartbeat, read defensively.

Every other device is untrusted: its heartbeat may be any bytes. It is parsed only when
small and shallow enough and validated field by field (cli/untrusted_json.py): a field
of the wrong type or out of range (`"tokens_per_s": "fast"`, a 4,000-digit budget) is
dropped and named, the rest of the heartbeat is still shown, and the device's row says
what was wrong with it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgeagent.cli.untrusted_json import parse_object, validate_dropping

# A real heartbeat is about 600 bytes and 3 levels deep.
MAX_HEARTBEAT_BYTES = 16 * 1024
MAX_HEARTBEAT_DEPTH = 8

Count = Annotated[int, Field(ge=0, le=10**9)]
Amount = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


class _Part(BaseModel):
    # Strict: "12.5" is not a number, true is not 1. Unknown keys are a newer daemon's.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class QueueInfo(_Part):
    depth: Count | None = None
    capacity: Count | None = None


class ContextInfo(_Part):
    budget: Count | None = None
    available_mb: Amount | None = None


class MemoryInfo(_Part):
    host_available_mb: Amount | None = None


class BoardInfo(_Part):
    temp_c: Annotated[float, Field(ge=-100, le=200, allow_inf_nan=False)] | None = None


class Heartbeat(_Part):
    """The fields the view shows (docs/protocol.md#heartbeat has them all)."""

    state: Annotated[str, Field(max_length=256)] | None = None
    ts: Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)] | None = None
    tokens_per_s: Amount | None = None
    queue: QueueInfo | None = None
    context: ContextInfo | None = None
    memory: MemoryInfo | None = None
    board: BoardInfo | None = None


def read_heartbeat(payload: bytes) -> tuple[Heartbeat | None, str | None]:
    """(what could be read, what was wrong with it); (None, None) for a cleared one."""
    if not payload:
        return None, None
    data, problem = parse_object(
        payload, what="heartbeat", max_bytes=MAX_HEARTBEAT_BYTES, max_depth=MAX_HEARTBEAT_DEPTH
    )
    if data is None:
        return None, problem
    beat, dropped = validate_dropping(Heartbeat, data)
    if beat is None:
        return None, "heartbeat unreadable"
    return beat, ("bad heartbeat field: " + ", ".join(dropped)) if dropped else None
