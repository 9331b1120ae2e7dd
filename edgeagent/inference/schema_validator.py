"""The final re-validation of an answer: jsonschema, with RE2 patterns and formats.

jsonschema is the independent second layer behind the grammar. Two of its defaults do
not suit caller schemas, so they are replaced here:

* `pattern`, `patternProperties` and `additionalProperties` (which matches property
  names against `patternProperties`) use Python's backtracking `re`; here they use
  RE2 via `ecma_regex`, in time linear in the input, with ECMA-262 syntax;
* `format` is checked (jsonschema checks none unless asked) for the formats llguidance
  enforces, so both layers check it.

The schema itself is checked against its draft's meta-schema with the `regex` format
meaning "an ECMA-262 pattern", not "a Python pattern" (`\\p{Letter}` is valid).
Validators built here are immutable after construction and safe to use from any thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, cast

import jsonschema
from jsonschema import ValidationError
from jsonschema.protocols import Validator

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference import ecma_regex

# The formats llguidance enforces while generating (it refuses every other one).
ENFORCED_FORMATS = (
    "date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri",
)  # fmt: skip
# The 2020-12 meanings (the global registry's "time" is draft 3's); a format whose
# checker library is missing is not checked (pyproject.toml lists them all).
_FORMATS = jsonschema.FormatChecker(())
_FORMATS.checkers = {
    name: checker
    for name, checker in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers.items()
    if name in ENFORCED_FORMATS
}
_SCHEMA_FORMATS = jsonschema.FormatChecker(())


@_SCHEMA_FORMATS.checks("regex", raises=ecma_regex.InvalidPatternError)
def _is_ecma_pattern(instance: object) -> bool:
    # Valid ECMA-262 that RE2 cannot run is check_patterns' SCHEMA_UNSUPPORTED, not this.
    if isinstance(instance, str):
        with contextlib.suppress(ecma_regex.UnsupportedPatternError):
            ecma_regex.translate(instance)
    return True


def _pattern(
    validator: Any, pattern: str, instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not ecma_regex.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if ecma_regex.search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    return [
        key
        for key in instance
        if key not in properties and not any(ecma_regex.search(p, key) for p in patterns)
    ]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(e) for e in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


def _validator_class(schema: dict[str, Any]) -> type[Validator]:
    declared = schema.get("$schema")
    if declared is not None and not isinstance(declared, str):
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "schema: $schema must be a string")
    # An unknown $schema falls back to 2020-12 (what llguidance implements).
    return _with_re2(
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    )


@functools.cache
def _with_re2(base: type[Validator]) -> type[Validator]:
    """The draft's validator class with RE2 keywords (made once per draft)."""
    extended = jsonschema.validators.extend(base, validators=_KEYWORDS)  # type: ignore[no-untyped-call]  # jsonschema leaves extend() unannotated
    return cast("type[Validator]", extended)


def check_schema(schema: dict[str, Any]) -> None:
    """INVALID_REQUEST unless schema is valid against its draft's meta-schema."""
    cls = _validator_class(schema)
    # What cls.check_schema does, with the ECMA-262 `regex` format (the Validator
    # protocol does not declare check_schema's format_checker).
    meta = jsonschema.validators.validator_for(cls.META_SCHEMA, default=cls)
    error = jsonschema.exceptions.best_match(
        meta(cls.META_SCHEMA, format_checker=_SCHEMA_FORMATS).iter_errors(schema)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise EdgeAgentError(
            ErrorCode.INVALID_REQUEST,
            f"schema is not valid JSON Schema at {where}: {error.message}",
        )


def check_patterns(schema: Any) -> None:
    """SCHEMA_UNSUPPORTED for a pattern RE2 cannot check (look-around, back-references).

    Looks at `pattern` strings and `patternProperties` keys wherever they are; compiling
    them now also fills the cache the validator uses.
    """
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(node["patternProperties"])
        for pattern in patterns:
            try:
                ecma_regex.compile_pattern(pattern)
            except ecma_regex.UnsupportedPatternError as exc:
                raise EdgeAgentError(
                    ErrorCode.SCHEMA_UNSUPPORTED,
                    f"pattern {pattern!r} cannot be checked without backtracking: {exc}",
                ) from exc
            except ecma_regex.InvalidPatternError as exc:
                raise EdgeAgentError(
                    ErrorCode.INVALID_REQUEST, f"pattern {pattern!r} is not ECMA-262: {exc}"
                ) from exc


def final_validator(schema: dict[str, Any]) -> Validator:
    """The validator of answers against schema (check_schema and check_patterns first)."""
    return _validator_class(schema)(schema, format_checker=_FORMATS)
