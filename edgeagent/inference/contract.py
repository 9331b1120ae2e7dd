"""What a task must answer: an inline JSON Schema or a choice among catalog actions.

`OutputSpec` is compiled once per task, before the task is queued, so a schema the
engine cannot enforce is refused up front (SCHEMA_UNSUPPORTED) instead of being
half-enforced. Its `grammar` drives constrained decoding (llguidance) and its
`validator` re-checks the finished answer, so a bug in either layer cannot let an
invalid answer out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from llguidance import LLMatcher

from edgeagent.config import ActionConfig, SchemaLimits
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.schema_limits import check_schema_limits
from edgeagent.inference.schema_validator import check_patterns, check_schema, final_validator
from edgeagent.inference.tighten import close_objects

# Compact JSON: no whitespace between tokens saves decode steps on a slow device, and
# `lenient: False` makes llguidance refuse keywords it cannot enforce.
_COMPILE_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "lenient": False}


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


def _compile(schema: dict[str, Any]) -> tuple[str, jsonschema.protocols.Validator]:
    if not isinstance(schema, dict):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "schema must be a JSON object")
    check_schema(schema)
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=_COMPILE_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise EdgeAgentError(ErrorCode.SCHEMA_UNSUPPORTED, str(exc)) from exc
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise EdgeAgentError(ErrorCode.SCHEMA_UNSUPPORTED, "; ".join(messages))
    # After llguidance: what it refuses is SCHEMA_UNSUPPORTED with its own words.
    check_patterns(schema)
    return grammar, final_validator(schema)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def schema_spec(schema: dict[str, Any], limits: SchemaLimits | None = None) -> OutputSpec:
    """Contract for a task that carries its own JSON Schema.

    With `limits` (a caller's schema) the schema is first checked against them. Blocking
    and CPU-bound (milliseconds to about a second): call it off the event loop.
    """
    if not isinstance(schema, dict):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "schema must be a JSON object")
    if limits is not None:
        check_schema_limits(schema, limits)
    try:
        tightened = close_objects(schema)
        grammar, validator = _compile(tightened)
    except RecursionError as exc:  # a $ref cycle or nesting deeper than the limits allow
        raise EdgeAgentError(ErrorCode.SCHEMA_UNSUPPORTED, "schema is nested too deeply") from exc
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
                "args": close_objects(a.schema_),
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


def compile_contract(
    catalog: Sequence[ActionConfig],
    *,
    schema: dict[str, Any] | None = None,
    action_names: Iterable[str] | None = None,
    limits: SchemaLimits,
) -> OutputSpec:
    """The contract of one request: its inline `schema`, else the allowed catalog actions.

    Pure and thread-safe (no shared mutable state; the RE2 cache is locked): the daemon
    runs it in a worker thread (`await asyncio.to_thread(compile_contract, ...)`), since
    compiling a caller's schema can take up to about a second. Raises EdgeAgentError
    (INVALID_REQUEST, SCHEMA_UNSUPPORTED, UNKNOWN_ACTION) and nothing else.
    """
    if schema is not None:
        return schema_spec(schema, limits)
    return action_spec(select_actions(catalog, action_names))
