"""Bounds on a caller's JSON Schema, checked before anything compiles it.

One walk over the schema as JSON data, without recursion (a deeply nested schema must
be refused, not overflow the stack). The keywords are looked at wherever they appear,
which can only over-count: a property named "enum" has an object, not a list, as value.
"""

from __future__ import annotations

import json
from typing import Any

from edgeagent.config import SchemaLimits
from edgeagent.errors import EdgeAgentError, ErrorCode


def _refuse(limit: str, what: str, value: int, maximum: int) -> EdgeAgentError:
    return EdgeAgentError(
        ErrorCode.SCHEMA_UNSUPPORTED,
        f"schema {what} is {value}, over the limit schema_limits.{limit} = {maximum}",
        limit=limit,
        value=value,
        maximum=maximum,
    )


def _check_keywords(node: dict[str, Any], limits: SchemaLimits) -> None:
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > limits.max_enum_items:
        raise _refuse("max_enum_items", "an enum's length", len(enum), limits.max_enum_items)
    patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
    if isinstance(node.get("patternProperties"), dict):
        patterns.extend(node["patternProperties"])
    for pattern in patterns:
        if len(pattern) > limits.max_pattern_length:
            raise _refuse(
                "max_pattern_length", "a pattern's length", len(pattern), limits.max_pattern_length
            )


def check_schema_limits(schema: Any, limits: SchemaLimits) -> None:
    """Raise SCHEMA_UNSUPPORTED, naming the limit, when the schema exceeds one."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > limits.max_depth:
            raise _refuse("max_depth", "nesting depth", depth, limits.max_depth)
        if isinstance(node, dict):
            _check_keywords(node, limits)
            stack.extend((child, depth + 1) for child in node.values())
        else:
            stack.extend((child, depth + 1) for child in node)
    # Measured after the depth walk: serializing a deep structure recurses.
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_bytes:
        raise _refuse("max_bytes", "size in bytes", size, limits.max_bytes)
