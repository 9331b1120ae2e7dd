"""Bounds on a caller's JSON Schema, checked before anything compiles it.

One walk over the schema as JSON data, without recursion (a deeply nested schema must
be refused, not overflow the stack). The keywords are looked at wherever they appear,
which can only over-count: a property named "enum" has an object, not a list, as value.

Also refused before compiling, whatever the limits: a schema that only refers to itself
(`check_self_reference`), which bounds nothing and from which no answer can be generated.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

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


# Keywords that constrain nothing: a schema of only these and one `$ref` *is* its target.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$anchor", "$comment", "$defs", "definitions", "title", "description"}
    | {"default", "examples", "deprecated", "readOnly", "writeOnly"}
)
_ONE_OF_ONE = ("allOf", "anyOf", "oneOf")
_DATA_KEYWORDS = frozenset(
    {"enum", "const", "default", "examples"}
)  # values, not schemas  # with a single subschema: that subschema


def _pointer_target(root: Any, ref: str) -> Any:
    """What a local `$ref` ("#", "#/$defs/a") points at; None when it is not local."""
    if not ref.startswith("#"):
        return None
    pointer = unquote(ref[1:])
    if not pointer:
        return root
    if not pointer.startswith("/"):
        return None  # an anchor ("#name"): llguidance resolves those itself
    node = root
    for part in pointer[1:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _stands_for(root: Any, node: Any) -> Any:
    """The schema `node` is only another name for (its `$ref` target, the one subschema
    of a one-element allOf/anyOf/oneOf), or None when it says something of its own."""
    if not isinstance(node, dict):
        return None
    keywords = set(node) - _ANNOTATIONS
    if keywords == {"$ref"} and isinstance(node["$ref"], str):
        return _pointer_target(root, node["$ref"])
    if len(keywords) == 1 and (key := keywords.pop()) in _ONE_OF_ONE:
        branches = node[key]
        return branches[0] if isinstance(branches, list) and len(branches) == 1 else None
    return None


def check_self_reference(schema: Any) -> None:
    """Refuse a schema (or subschema) that only refers to itself, like `{"$ref": "#"}`.

    Every JSON value satisfies it, but the grammar compiled from it is a rule defined
    only by itself: the model ran to max_tokens and the task answered OUTPUT_INVALID.
    Said up front, SCHEMA_UNSUPPORTED tells the caller what to change. A recursive schema
    that says something besides (`{"type": "array", "items": {"$ref": "#"}}`) is fine.
    """
    verdict: dict[int, bool] = {}  # id(node) -> whether following it ends in a cycle
    stack: list[Any] = [schema]
    while stack:
        start = stack.pop()
        if isinstance(start, dict):
            stack.extend(v for k, v in start.items() if k not in _DATA_KEYWORDS)
        elif isinstance(start, list):
            stack.extend(start)
            continue
        else:
            continue
        path: dict[int, None] = {}  # ids in the order followed
        node: Any = start
        while node is not None and id(node) not in verdict and id(node) not in path:
            path[id(node)] = None
            node = _stands_for(schema, node)
        cyclic = node is not None and (id(node) in path or verdict[id(node)])
        verdict.update(dict.fromkeys(path, cyclic))
        if cyclic:
            raise EdgeAgentError(
                ErrorCode.SCHEMA_UNSUPPORTED,
                'schema refers only to itself (a $ref cycle such as {"$ref": "#"} with'
                " nothing else): every JSON value satisfies it and no answer can be"
                " generated from it; say what the answer is (a type, properties)",
            )
