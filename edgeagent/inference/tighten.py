"""Default `additionalProperties: false` where it cannot make a schema unsatisfiable.

An object schema that lists its `properties` and says nothing about other keys allows
any other key; the model would spend tokens on keys nobody asked for. Closing it keeps
every answer valid against the caller's schema, as long as that object schema is the
only thing deciding which keys the object has. It is not when other subschemas apply
to the same instance and may add properties, the "extends" forms:

    {"$ref": "#/$defs/base", "properties": {"extra": ...}}
    {"allOf": [{"$ref": "#/$defs/base"}, {"properties": {"extra": ...}}]}

Closing `base` (or the outer object) there would forbid the other part's keys. So a
schema applied in place together with others ("shared") is left open, with everything
below it: members of `allOf`, any schema that combines its own property keywords with
`$ref`/`anyOf`/`oneOf`/..., or several of those, and every target of a `$ref` made from
such a place; and nothing under `not`, `if`/`then`/`else` or `oneOf`, where a narrower
subschema can let more through. Plain objects, and the branches of a lone `anyOf`
(or a `$ref` alone), are closed.
"""

from __future__ import annotations

import copy
from typing import Any

_IN_PLACE = (
    "$ref", "$dynamicRef", "allOf", "anyOf", "oneOf", "if", "then", "else", "not",
    "dependentSchemas",
)  # fmt: skip
_OWN = (
    "properties", "patternProperties", "additionalProperties", "unevaluatedProperties",
    "required", "propertyNames", "minProperties", "maxProperties", "dependentRequired",
)  # fmt: skip
_OPEN_ENDED = ("additionalProperties", "patternProperties", "unevaluatedProperties")
# Where subschemas are, and whether closing inside them is never sound: they are
# negated or conditions (not, if), must match together with others (allOf,
# dependentSchemas, then/else), or exactly one must match (oneOf: a narrower branch
# can turn "two branches match" into "one does").
_SUBSCHEMA_MAPS = {
    "properties": False, "patternProperties": False, "$defs": False, "definitions": False,
    "dependentSchemas": True,
}  # fmt: skip
_SUBSCHEMA_SINGLE = {
    "items": False, "additionalProperties": False, "contains": False, "propertyNames": False,
    "unevaluatedItems": False, "unevaluatedProperties": False, "not": True, "if": True,
    "then": True, "else": True,
}  # fmt: skip
_SUBSCHEMA_LISTS = {"prefixItems": False, "anyOf": False, "allOf": True, "oneOf": True}
_LOCAL_REF_CHARS = frozenset("#/~_.-$") | frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
)


class _Unresolvable(Exception):  # noqa: N818 - internal signal, never escapes this module
    """A $ref made from a shared place that this module cannot follow."""


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _combined(node: dict[str, Any]) -> bool:
    """Whether several subschemas decide, in place, which keys this object may have."""
    in_place = [k for k in _IN_PLACE if k in node]
    own = any(k in node for k in _OWN)
    return len(in_place) > 1 or (own and bool(in_place))


def _subschemas(node: dict[str, Any], pointer: str) -> list[tuple[Any, str, bool]]:
    """(subschema, its JSON pointer, never close inside it) for every subschema."""
    out: list[tuple[Any, str, bool]] = []
    for key, never in _SUBSCHEMA_MAPS.items():
        if isinstance(node.get(key), dict):
            out.extend((s, f"{pointer}/{key}/{_escape(k)}", never) for k, s in node[key].items())
    for key, never in _SUBSCHEMA_SINGLE.items():
        if isinstance(node.get(key), dict):
            out.append((node[key], f"{pointer}/{key}", never))
    for key, never in _SUBSCHEMA_LISTS.items():
        if isinstance(node.get(key), list):
            out.extend((s, f"{pointer}/{key}/{i}", never) for i, s in enumerate(node[key]))
    return out


def _walk(
    node: Any, pointer: str, *, shared: bool, shared_refs: set[str], found: set[str], close: bool
) -> None:
    if not isinstance(node, dict):
        return
    shared = shared or pointer in shared_refs
    if pointer != "#" and isinstance(node.get("$id", node.get("id")), str):
        raise _Unresolvable  # a nested base URI: "#/..." below it means another root
    if shared or _combined(node):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not (ref == "#" or ref.startswith("#/")) or not set(ref) <= _LOCAL_REF_CHARS:
                raise _Unresolvable
            found.add(ref)
        if "$dynamicRef" in node:
            raise _Unresolvable
        shared = True
    elif close and _closable(node):
        node["additionalProperties"] = False
    for sub, sub_pointer, never in _subschemas(node, pointer):
        # $defs apply only where a $ref points to them, not where they are written.
        in_defs = sub_pointer.startswith((f"{pointer}/$defs/", f"{pointer}/definitions/"))
        _walk(
            sub,
            sub_pointer,
            shared=never or (shared and not in_defs),
            shared_refs=shared_refs,
            found=found,
            close=close,
        )


def _closable(node: dict[str, Any]) -> bool:
    properties = node.get("properties")
    if not isinstance(properties, dict) or any(k in node for k in _OPEN_ENDED):
        return False
    required = node.get("required", [])
    # Closing would forbid a required key that is not listed: unsatisfiable.
    return isinstance(required, list) and all(r in properties for r in required)


def close_objects(schema: Any) -> Any:
    """A copy of schema with `additionalProperties: false` where it is safe (see above)."""
    tightened = copy.deepcopy(schema)
    if not isinstance(tightened, dict):
        return tightened
    shared_refs: set[str] = set()
    try:
        # A $ref target made shared may itself hold $refs: repeat until nothing new.
        while True:
            found: set[str] = set()
            _walk(tightened, "#", shared=False, shared_refs=shared_refs, found=found, close=False)
            if found <= shared_refs:
                break
            shared_refs |= found
        _walk(tightened, "#", shared=False, shared_refs=shared_refs, found=set(), close=True)
    except _Unresolvable:
        return copy.deepcopy(schema)  # cannot tell what is shared: close nothing
    return tightened
