"""JSON from other devices, parsed defensively (the fleet view's heartbeats, pending holds).

Every other device is untrusted: what it retains may be any bytes. The JSON is parsed
only when it is small and shallow enough (`json.loads` recurses, and a 100,000-deep
document raised RecursionError on paho's network thread, which killed the view's
subscription), then validated field by field against a pydantic model: a field of the
wrong type or out of range is dropped and named, and the rest is still shown.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

_MAX_REPAIRS = 32  # validation passes that drop bad fields (each drops at least one)


def depth_problem(payload: bytes, max_depth: int) -> str | None:
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
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
        elif byte in b"]}":
            depth -= 1
    return None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_object(
    payload: bytes, *, what: str, max_bytes: int, max_depth: int
) -> tuple[dict[str, Any] | None, str | None]:
    """The payload as a JSON object, or why it cannot be read as one."""
    if len(payload) > max_bytes:
        return None, f"{what} of {len(payload)} bytes, over {max_bytes}"
    problem = depth_problem(payload, max_depth)
    if problem is not None:
        return None, f"{what} {problem}"
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return None, f"{what} is not JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"{what} is not a JSON object"
    return data, None


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


def validate_dropping(model: type[Model], data: dict[str, Any]) -> tuple[Model | None, list[str]]:
    """`model` from `data`, leaving out every field that fails validation; (None, ...)
    when even that does not validate. The second item names the dropped fields."""
    dropped: list[str] = []
    for _ in range(_MAX_REPAIRS):
        try:
            return model.model_validate(data), sorted(set(dropped))
        except ValidationError as exc:
            dropped.extend(_drop(data, tuple(e["loc"])) for e in exc.errors())
    return None, sorted(set(dropped))
