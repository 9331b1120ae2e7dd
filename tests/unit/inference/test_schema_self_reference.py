"""A schema that only refers to itself is refused up front, not run to max_tokens.

`{"$ref": "#"}` is satisfied by every JSON value, but llguidance compiles it into a rule
defined only by itself, which no text completes: the task used to run to max_tokens and
answer OUTPUT_INVALID. Recursive schemas that say something besides still compile.
"""

from __future__ import annotations

import pytest
from support.scripted_model import grammar_accepts

from edgeagent.config import SchemaLimits
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import schema_spec


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"$ref": "#", "title": "anything", "description": "refers to itself"},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
        {"allOf": [{"$ref": "#"}]},
        {"anyOf": [{"$ref": "#"}]},
        {"$ref": "#/$defs/x", "$defs": {"x": {"oneOf": [{"$ref": "#/$defs/x"}]}}},
        # A subschema referring only to itself: the property's value can be anything.
        {
            "type": "object",
            "properties": {"x": {"$ref": "#/properties/x"}},
            "required": ["x"],
        },
        {"$ref": "#/%24defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},  # percent-encoded
    ],
)
def test_a_schema_that_only_refers_to_itself_is_schema_unsupported(schema):
    with pytest.raises(EdgeAgentError) as info:
        schema_spec(schema, SchemaLimits())
    assert info.value.code == ErrorCode.SCHEMA_UNSUPPORTED
    assert "refers only to itself" in info.value.message


@pytest.mark.parametrize(
    ("schema", "valid", "invalid"),
    [
        # Recursion that bottoms out: a nested list of integers.
        (
            {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]},
            "[1,[2,[]]]",
            '"x"',
        ),
        (
            {
                "type": "object",
                "properties": {"name": {"type": "string"}, "child": {"$ref": "#"}},
                "required": ["name"],
            },
            '{"name":"a","child":{"name":"b"}}',
            '{"child":{"name":"b"}}',
        ),
        ({"$ref": "#/$defs/n", "$defs": {"n": {"type": "integer"}}}, "7", "7.5"),
        # A value that merely looks like a reference is data, not a schema.
        ({"enum": [{"$ref": "#"}, 1]}, '{"$ref":"#"}', "2"),
    ],
)
def test_recursive_schemas_that_say_something_still_compile(schema, valid, invalid):
    spec = schema_spec(schema, SchemaLimits())
    assert grammar_accepts(spec.grammar, valid)
    assert not grammar_accepts(spec.grammar, invalid)
