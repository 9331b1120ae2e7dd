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
from edgeagent.inference.schema_limits import check_schema_limits, check_self_reference
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
    # Action contracts: the grammar of the whole catalog's choice, whatever subset the
    # request allows. The gate weighs the name against it (confidence.py), so narrowing
    # what may be answered never narrows what the confidence compares against.
    gate_grammar: str | None = None
    catalog_actions: tuple[str, ...] = ()  # every name of the catalog, in order
    no_action: str | None = None  # the catalog's "nothing to do" action, if it has one

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
    check_self_reference(schema)  # llguidance would compile a rule made only of itself
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


REASON_MAX_CHARS = 80  # `[model] reason`: the reason's bound, in characters
# Said once for every catalog: the model keeps quantities, in the unit the schema asks for.
_NUMBERS = (
    "Copy numbers into the arguments as digits, in the unit the argument asks for: "
    "numbers written in words become digits (twenty-five = 25, an hour = 60 minutes, "
    "half = 50 percent)."
)


def _describe(action: ActionConfig, *, default: bool) -> str:
    """The catalog entry of one action: what it does, when to use it, its arguments and
    examples. Part of the system message, so of the prefix cached across tasks."""
    parts = [f"- {action.name}: {action.description}"]
    if default:
        parts.append("The default: choose it whenever nothing needs to be done.")
    if action.when:
        parts.append(f"Use it when: {action.when}")
    parts.append(f"Arguments schema: {_compact(action.schema_)}")
    lines = [" ".join(parts)]
    no_args = not action.schema_.get("properties")
    for text, given in action.example_texts():
        args = {} if given is None and no_args else given
        shown = "" if args is None else f" -> {_compact({'action': action.name, 'args': args})}"
        lines.append(f"  Example: {_compact(text)}{shown}")
    return "\n".join(lines)


def _action_schema(actions: Sequence[ActionConfig], *, reason: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if reason:
        properties["reason"] = {"type": "string", "minLength": 1, "maxLength": REASON_MAX_CHARS}
    branches = [
        {
            "type": "object",
            "properties": {
                **properties,
                "action": {"const": a.name},
                "args": close_objects(a.schema_),
            },
            "required": [*properties, "action", "args"],
            "additionalProperties": False,
        }
        for a in actions
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def action_spec(
    actions: Sequence[ActionConfig],
    *,
    reason: bool = False,
    catalog: Sequence[ActionConfig] | None = None,
) -> OutputSpec:
    """Contract for choosing one of `actions` (of the whole `catalog`, default: the same
    actions) and filling its arguments.

    One branch per action, each `{"action": const NAME, "args": ARGS}`, in that key
    order so the model commits to the action before it writes the arguments. The
    grammar has no branch for any other name, so no other action can be produced.
    With `reason`, each branch starts with a short `"reason"` string: the model says
    why before it chooses (`[model] reason`; the reply carries it, the action message
    does not).

    The prompt lists the whole catalog whatever the request allows: the model sees the
    same choice (and the same cached prefix) as for an unrestricted request, and the
    gate weighs the chosen name against every name of the catalog (`gate_grammar`).
    """
    catalog = list(catalog) if catalog is not None else list(actions)
    schema = _action_schema(actions, reason=reason)
    grammar, validator = _compile(schema)
    same = [a.name for a in actions] == [a.name for a in catalog]
    gate_grammar = grammar if same else _compile(_action_schema(catalog, reason=reason))[0]
    default = next((a.name for a in catalog if a.nothing_to_do), None)
    listing = "\n".join(_describe(a, default=a.name == default) for a in catalog)
    shape = '{"action": "<name>", "args": {...}}'
    if reason:
        shape = '{"reason": "<why, in a few words>", "action": "<name>", "args": {...}}'
    rules = [_NUMBERS]
    if default is not None and len(catalog) > 1:
        rules.append(
            f"If the input reports normal values or nothing needs to be done, answer {default}."
        )
    instructions = (
        "Choose exactly one of these actions and fill in its arguments:\n"
        f"{listing}\n"
        f"{' '.join(rules)}\n"
        f"Answer with JSON: {shape}"
    )
    return OutputSpec(
        "action",
        schema,
        grammar,
        validator,
        instructions,
        tuple(a.name for a in actions),
        gate_grammar=gate_grammar,
        catalog_actions=tuple(a.name for a in catalog),
        no_action=default,
    )


def compile_contract(
    catalog: Sequence[ActionConfig],
    *,
    schema: dict[str, Any] | None = None,
    action_names: Iterable[str] | None = None,
    limits: SchemaLimits,
    reason: bool = False,
) -> OutputSpec:
    """The contract of one request: its inline `schema`, else the allowed catalog actions.

    Pure and thread-safe (no shared mutable state; the RE2 cache is locked): the daemon
    runs it in a worker thread (`await asyncio.to_thread(compile_contract, ...)`), since
    compiling a caller's schema can take up to about a second. Raises EdgeAgentError
    (INVALID_REQUEST, SCHEMA_UNSUPPORTED, UNKNOWN_ACTION) and nothing else. `reason`
    (`[model] reason`) applies to action contracts only.
    """
    if schema is not None:
        return schema_spec(schema, limits)
    selected = select_actions(catalog, action_names)
    return action_spec(selected, reason=reason, catalog=catalog)
