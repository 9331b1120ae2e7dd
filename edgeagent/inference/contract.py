"""What a task must answer: an inline JSON Schema or a choice among catalog actions.

`OutputSpec` is compiled once per task, before the task is queued, so a schema the
engine cannot enforce is refused up front (SCHEMA_UNSUPPORTED) instead of being
half-enforced. Its `grammar` drives constrained decoding (llguidance) and its
`validator` re-checks the finished answer, so a bug in either layer cannot let an
invalid answer out.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from llguidance import LLMatcher

from edgeagent.config import ActionConfig
from edgeagent.errors import EdgeAgentError, ErrorCode

# Compact JSON: no whitespace between tokens saves decode steps on a slow device, and
# `lenient: False` makes llguidance refuse keywords it cannot enforce.
_COMPILE_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "lenient": False}
# Keywords under which a sub-schema is another schema we may tighten.
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_SINGLE = ("items", "additionalProperties")


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A compiled answer contract: schema, grammar, validator and the prompt text."""

    kind: str  # "schema" or "action"
    json_schema: dict[str, Any]
    grammar: str
    validator: jsonschema.protocols.Validator
    instructions: str
    allowed_actions: tuple[str, ...] = ()

    def validate(self, value: Any) -> None:
        """Raise OUTPUT_INVALID unless value satisfies the contract."""
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(root)"
            raise EdgeAgentError(ErrorCode.OUTPUT_INVALID, f"{where}: {first.message}")
        if self.kind == "action" and value.get("action") not in self.allowed_actions:
            raise EdgeAgentError(ErrorCode.OUTPUT_INVALID, "action outside the allowed set")


def _close_objects(schema: Any) -> Any:
    """Default `additionalProperties: false` on objects that list their properties.

    Every answer this allows is still valid against the caller's schema; it only stops
    the model from spending tokens on keys nobody asked for. Members of `allOf` are left
    alone because closing them would make the conjunction unsatisfiable.
    """
    if not isinstance(schema, dict):
        return schema
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and "patternProperties" not in schema
        and "unevaluatedProperties" not in schema
        and "allOf" not in schema
    ):
        schema["additionalProperties"] = False
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for sub in schema[key].values():
                _close_objects(sub)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for sub in schema[key]:
                _close_objects(sub)
    for key in _SUBSCHEMA_SINGLE:
        _close_objects(schema.get(key))
    return schema


def _compile(schema: dict[str, Any]) -> tuple[str, jsonschema.protocols.Validator]:
    if not isinstance(schema, dict):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "schema must be a JSON object")
    validator_cls = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST, f"schema is not valid JSON Schema at {where}: {exc.message}"
        ) from exc
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=_COMPILE_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise EdgeAgentError(ErrorCode.SCHEMA_UNSUPPORTED, str(exc)) from exc
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise EdgeAgentError(ErrorCode.SCHEMA_UNSUPPORTED, "; ".join(messages))
    return grammar, validator_cls(schema)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def schema_spec(schema: dict[str, Any]) -> OutputSpec:
    """Contract for a task that carries its own JSON Schema."""
    if not isinstance(schema, dict):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "schema must be a JSON object")
    tightened = _close_objects(copy.deepcopy(schema))
    grammar, validator = _compile(tightened)
    instructions = f"Answer with one JSON value that follows this JSON Schema:\n{_compact(schema)}"
    return OutputSpec("schema", tightened, grammar, validator, instructions)


def select_actions(
    catalog: Sequence[ActionConfig], names: Iterable[str] | None
) -> list[ActionConfig]:
    """The allowed subset, in catalog order; unknown names are UNKNOWN_ACTION."""
    by_name = {a.name: a for a in catalog}
    if names is None:
        if not catalog:
            raise EdgeAgentError(ErrorCode.UNKNOWN_ACTION, "the action catalog is empty")
        return list(catalog)
    wanted = list(dict.fromkeys(names))
    if not wanted:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "the list of actions is empty")
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise EdgeAgentError(
            ErrorCode.UNKNOWN_ACTION,
            f"not in the catalog: {', '.join(unknown)}",
            known=sorted(by_name),
        )
    return [a for a in catalog if a.name in wanted]


def action_spec(actions: Sequence[ActionConfig]) -> OutputSpec:
    """Contract for choosing one of `actions` and filling its arguments.

    One branch per action, each `{"action": const NAME, "args": ARGS}`, in that key
    order so the model commits to the action before it writes the arguments. The
    grammar has no branch for any other name, so no other action can be produced.
    """
    branches = [
        {
            "type": "object",
            "properties": {
                "action": {"const": a.name},
                "args": _close_objects(copy.deepcopy(a.schema_)),
            },
            "required": ["action", "args"],
            "additionalProperties": False,
        }
        for a in actions
    ]
    schema: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    grammar, validator = _compile(schema)
    listing = "\n".join(
        f"- {a.name}: {a.description} Arguments schema: {_compact(a.schema_)}" for a in actions
    )
    instructions = (
        "Choose exactly one of these actions and fill in its arguments:\n"
        f"{listing}\n"
        'Answer with JSON: {"action": "<name>", "args": {...}}'
    )
    return OutputSpec(
        "action", schema, grammar, validator, instructions, tuple(a.name for a in actions)
    )
