"""What the fleet view reads from another device's retained heartbeat, read defensively.

Every other device is untrusted: its heartbeat may be any bytes. The JSON is parsed
only when it is small and shallow enough (`json.loads` recurses, and a 100,000-deep
document raised RecursionError on paho's network thread, which killed the view's
subscription), then validated field by field: a field of the wrong type or out of
range (`"tokens_per_s": "fast"`, a 4,000-digit budget) is dropped and named, the rest of
the heartbeat is still shown, and the device's row says what was wrong with it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# A real heartbeat is about 600 bytes and 3 levels deep.
MAX_HEARTBEAT_BYTES = 16 * 1024
MAX_HEARTBEAT_DEPTH = 8
_MAX_REPAIRS = 32  # validation passes that drop bad fields (each drops at least one)

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


def _depth_problem(payload: bytes) -> str | None:
    """Why the JSON text nests too deeply to parse, counted without parsing it."""
    depth = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > MAX_HEARTBEAT_DEPTH:
                return f"nested deeper than {MAX_HEARTBEAT_DEPTH} levels"
        elif byte in b"]}":
            depth -= 1
    return None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _drop(data: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    """Remove the field an error points at (the deepest key of `loc` that exists)."""
    node: Any = data
    for depth, key in enumerate(loc):
        if not isinstance(node, dict) or key not in node:
            break
        if depth == len(loc) - 1 or not isinstance(node[key], dict):
            del node[key]
            return ".".join(map(str, loc[: depth + 1]))
        node = node[key]
    return ".".join(map(str, loc))


def _parse(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The heartbeat as a JSON object, or why it cannot be read as one."""
    if len(payload) > MAX_HEARTBEAT_BYTES:
        return None, f"heartbeat of {len(payload)} bytes, over {MAX_HEARTBEAT_BYTES}"
    problem = _depth_problem(payload)
    if problem is not None:
        return None, f"heartbeat {problem}"
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return None, f"heartbeat is not JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, "heartbeat is not a JSON object"
    return data, None


def read_heartbeat(payload: bytes) -> tuple[Heartbeat | None, str | None]:
    """(what could be read, what was wrong with it); (None, None) for a cleared one."""
    if not payload:
        return None, None
    data, problem = _parse(payload)
    if data is None:
        return None, problem
    dropped: list[str] = []
    for _ in range(_MAX_REPAIRS):
        try:
            beat = Heartbeat.model_validate(data)
        except ValidationError as exc:
            dropped.extend(_drop(data, tuple(e["loc"])) for e in exc.errors())
            continue
        bad = sorted(set(dropped))
        return beat, ("bad heartbeat field: " + ", ".join(bad)) if bad else None
    return None, "heartbeat unreadable"
