"""Output contracts without a model: compilation, refusal, validation."""

from __future__ import annotations

import pytest
from support.catalogs import GREENHOUSE_ACTIONS

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import action_spec, schema_spec, select_actions

CATALOG = GREENHOUSE_ACTIONS


@pytest.mark.parametrize(
    ("keyword", "schema"),
    [
        ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
        (
            "if",
            {
                "type": "object",
                "if": {"properties": {"a": {"const": 1}}},
                "then": {"required": ["b"]},
            },
        ),
        ("not", {"not": {"type": "string"}}),
        ("contains", {"type": "array", "contains": {"type": "integer"}}),
        ("dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}),
        ("hostnamexx", {"type": "string", "format": "hostnamexx"}),
        ("http://example.com/x.json", {"$ref": "http://example.com/x.json"}),
    ],
)
def test_unsupported_features_are_refused(keyword, schema):
    with pytest.raises(EdgeAgentError) as info:
        schema_spec(schema)
    assert info.value.code is ErrorCode.SCHEMA_UNSUPPORTED
    assert keyword in info.value.message


def test_invalid_schema_is_invalid_request():
    with pytest.raises(EdgeAgentError) as info:
        schema_spec({"type": "objekt"})
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_objects_are_closed_without_changing_the_callers_schema():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
    }
    spec = schema_spec(schema)
    assert "additionalProperties" not in schema
    assert spec.json_schema["additionalProperties"] is False
    assert spec.json_schema["properties"]["a"]["additionalProperties"] is False


def test_validate_rejects_wrong_output():
    spec = schema_spec(
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "maximum": 3}},
            "required": ["n"],
        }
    )
    spec.validate({"n": 3})
    with pytest.raises(EdgeAgentError) as info:
        spec.validate({"n": 4})
    assert info.value.code is ErrorCode.OUTPUT_INVALID
    assert "n" in info.value.message


def test_select_actions():
    assert [a.name for a in select_actions(CATALOG, None)] == [
        "open_vent",
        "notify",
        "start_heater",
    ]
    assert [a.name for a in select_actions(CATALOG, ["notify"])] == ["notify"]
    with pytest.raises(EdgeAgentError) as info:
        select_actions(CATALOG, ["notify", "launch_rocket"])
    assert info.value.code is ErrorCode.UNKNOWN_ACTION
    assert "launch_rocket" in info.value.message
    with pytest.raises(EdgeAgentError) as info:
        select_actions([], None)
    assert info.value.code is ErrorCode.UNKNOWN_ACTION


def test_action_spec_allows_only_listed_actions():
    spec = action_spec(select_actions(CATALOG, ["open_vent"]))
    spec.validate({"action": "open_vent", "args": {"percent": 10}})
    for bad in (
        {"action": "notify", "args": {"message": "x"}},
        {"action": "open_vent", "args": {"percent": 101}},
        {"action": "open_vent"},
    ):
        with pytest.raises(EdgeAgentError):
            spec.validate(bad)
    assert "open_vent" in spec.instructions
    assert "notify" not in spec.instructions
