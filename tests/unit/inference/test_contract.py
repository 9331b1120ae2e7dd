"""Output contracts without a model: compilation, refusal, validation."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from support.catalogs import GREENHOUSE_ACTIONS
from support.scripted_model import grammar_accepts

from edgeagent.config import ActionConfig, SchemaLimits
from edgeagent.config.catalog import ActionExample
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import (
    REASON_MAX_CHARS,
    action_spec,
    compile_contract,
    schema_spec,
    select_actions,
)

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


# -- catalog text: when, examples, the nothing-to-do default; the reason field -----------

GUIDED = [
    CATALOG[0].model_copy(
        update={
            "when": "the air is too warm",
            "examples": [
                "It is 31 degrees in here.",
                ActionExample(input="Vent to half.", args={"percent": 50}),
            ],
        }
    ),
    CATALOG[1],
    ActionConfig(
        name="idle",
        description="Nothing to do.",
        nothing_to_do=True,
        examples=["All readings normal."],
        schema={"type": "object", "properties": {}},
    ),
]


def test_catalog_text_has_when_examples_and_the_default():
    text = action_spec(GUIDED).instructions
    assert (
        "- open_vent: Open the greenhouse roof vent by a percentage. Use it when: the air is too warm"
        in text
    )
    assert '  Example: "It is 31 degrees in here."\n' in text
    assert '  Example: "Vent to half." -> {"action":"open_vent","args":{"percent":50}}' in text
    assert (
        "- idle: Nothing to do. The default: choose it whenever nothing needs to be done." in text
    )
    assert '  Example: "All readings normal." -> {"action":"idle","args":{}}' in text
    assert "nothing needs to be done, answer idle." in text
    assert "numbers written in words become digits" in text
    # Without guidance, an entry is one line, as before; no default without a designation.
    plain = action_spec(CATALOG).instructions
    assert "Use it when" not in plain
    assert "Example" not in plain
    assert "The default" not in plain
    assert "- notify: Send a short message to the operator. Arguments schema: {" in plain


def test_the_catalog_text_is_the_same_for_every_task():
    # The system message is the cached prefix: it must not depend on anything per task.
    assert action_spec(GUIDED).instructions == action_spec(list(GUIDED)).instructions


def test_reason_comes_before_the_action():
    spec = action_spec(GUIDED, reason=True)
    answer = {"reason": "too warm", "action": "open_vent", "args": {"percent": 40}}
    spec.validate(answer)
    text = json.dumps(answer, separators=(",", ":"))
    assert grammar_accepts(spec.grammar, text)
    # The reason must come first, and is bounded.
    reordered = '{"action":"open_vent","reason":"too warm","args":{"percent":40}}'
    assert not grammar_accepts(spec.grammar, reordered)
    with pytest.raises(EdgeAgentError):
        spec.validate({**answer, "reason": "x" * (REASON_MAX_CHARS + 1)})
    with pytest.raises(EdgeAgentError):
        spec.validate({"action": "open_vent", "args": {"percent": 40}})
    assert '{"reason": "<why, in a few words>", "action": "<name>"' in spec.instructions
    # Without the setting, a reason is not part of the answer.
    with pytest.raises(EdgeAgentError):
        action_spec(GUIDED).validate(answer)


def test_compile_contract_passes_reason():
    spec = compile_contract(GUIDED, limits=SchemaLimits(), reason=True)
    spec.validate({"reason": "r", "action": "idle", "args": {}})
    schema = compile_contract(
        GUIDED, schema={"type": "integer"}, limits=SchemaLimits(), reason=True
    )
    schema.validate(3)


# -- limits, patterns, formats, extends forms, compiling off the loop ------------------

LIMITS = SchemaLimits(max_bytes=2000, max_depth=6, max_enum_items=10, max_pattern_length=20)


def _nested(depth):
    schema = {"type": "integer"}
    for _ in range(depth - 1):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("limit", "schema"),
    [
        ("max_bytes", {"type": "string", "description": "x" * 2000}),
        ("max_depth", _nested(5)),  # 5 schemas, 9 levels of objects with "properties"
        ("max_enum_items", {"enum": list(range(11))}),
        ("max_pattern_length", {"type": "string", "pattern": "a" * 21}),
        ("max_pattern_length", {"type": "object", "patternProperties": {"b" * 21: {}}}),
    ],
)
def test_each_schema_limit_is_refused_by_name(limit, schema):
    with pytest.raises(EdgeAgentError) as info:
        schema_spec(schema, LIMITS)
    assert info.value.code is ErrorCode.SCHEMA_UNSUPPORTED
    assert f"schema_limits.{limit}" in info.value.message
    assert info.value.details["limit"] == limit


def test_schemas_within_the_limits_compile():
    schema_spec(_nested(3), LIMITS)
    schema_spec({"enum": list(range(10))}, LIMITS)
    schema_spec({"type": "string", "pattern": "a" * 20}, LIMITS)


def test_a_very_deep_schema_is_refused_not_a_crash():
    deep = {"type": "integer"}
    for _ in range(5000):
        deep = {"items": deep}
    with pytest.raises(EdgeAgentError) as info:
        schema_spec(deep, SchemaLimits())
    assert info.value.code is ErrorCode.SCHEMA_UNSUPPORTED


def test_catastrophic_patterns_are_checked_by_re2_not_re(monkeypatch):
    spec = schema_spec({"type": "string", "pattern": "^(a+)+$"})
    for module in (jsonschema._keywords, jsonschema._utils):  # what jsonschema would use
        monkeypatch.setattr(module.re, "search", lambda *_: pytest.fail("Python re used"))
    spec.validate("a" * 40)
    with pytest.raises(EdgeAgentError) as info:
        spec.validate("a" * 5000 + "!")  # exponential for a backtracking engine
    assert info.value.code is ErrorCode.OUTPUT_INVALID


def test_pattern_properties_and_additional_properties_use_re2(monkeypatch):
    spec = schema_spec(
        {
            "type": "object",
            "patternProperties": {"^(a+)+$": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    monkeypatch.setattr(jsonschema._utils.re, "search", lambda *_: pytest.fail("Python re used"))
    spec.validate({"aaa": 1})
    for bad in ({"aaa": "x"}, {"a" * 3000 + "!": 1}):
        with pytest.raises(EdgeAgentError):
            spec.validate(bad)


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"^\p{Letter}+$", "Grüße", "a1"),
        (r"^\p{Lu}\p{Ll}+$", "Éclair", "éclair"),
        (r"^\u00e9t\u00E9$", "été", "ete"),
        (r"^\S+$", "abc", "a\u00a0b"),  # ECMA \s includes U+00A0
        (r"^[\w-]{2,8}$", "zone-3", "zöne"),  # ECMA \w is ASCII
    ],
)
def test_ecma_262_patterns_are_supported(pattern, good, bad):
    spec = schema_spec({"type": "string", "pattern": pattern})
    spec.validate(good)
    with pytest.raises(EdgeAgentError):
        spec.validate(bad)
    assert grammar_accepts(spec.grammar, json.dumps(good, ensure_ascii=False))
    assert not grammar_accepts(spec.grammar, json.dumps(bad, ensure_ascii=False))


@pytest.mark.parametrize(
    ("pattern", "code"),
    [
        ("(?=a)a", ErrorCode.SCHEMA_UNSUPPORTED),
        (r"(a)\1", ErrorCode.SCHEMA_UNSUPPORTED),
        ("[a-", ErrorCode.INVALID_REQUEST),
        (r"\q", ErrorCode.INVALID_REQUEST),
    ],
)
def test_patterns_that_cannot_be_checked(pattern, code):
    with pytest.raises(EdgeAgentError) as info:
        schema_spec({"type": "string", "pattern": pattern})
    assert info.value.code is code


@pytest.mark.parametrize(
    ("schema_format", "good", "bad"),
    [
        ("date", "2024-02-29", "2021-02-29"),
        ("date-time", "2024-05-01T12:00:00Z", "2024-05-01T25:00:00Z"),
        ("time", "12:00:00Z", "12:60:00Z"),
        ("duration", "P3DT4H", "P3D4H"),
        ("ipv4", "192.168.0.1", "192.168.0.256"),
        ("uuid", "2eb8aa08-aa98-11ea-b4aa-73b441d16380", "2eb8aa08-aa98-11ea-b4aa-73b441d1638"),
        ("hostname", "greenhouse-1.local", "-bad-.local"),
    ],
)
def test_the_final_validator_checks_formats(schema_format, good, bad):
    spec = schema_spec({"type": "string", "format": schema_format})
    spec.validate(good)
    with pytest.raises(EdgeAgentError) as info:
        spec.validate(bad)
    assert info.value.code is ErrorCode.OUTPUT_INVALID


BASE = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}},
    "required": ["name"],
}
EXTENDED = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(
    "schema",
    [
        {"$defs": {"base": BASE}, "$ref": "#/$defs/base", **{k: EXTENDED[k] for k in EXTENDED}},
        {"$defs": {"base": BASE}, "allOf": [{"$ref": "#/$defs/base"}, EXTENDED]},
        {"allOf": [BASE, EXTENDED]},
    ],
    ids=["ref-and-properties", "allOf-ref-and-object", "allOf-objects"],
)
def test_extends_forms_are_accepted_and_satisfiable(schema):
    spec = schema_spec(schema)
    answer = {"name": "Ann", "age": 3}
    spec.validate(answer)
    texts = [json.dumps(answer, separators=(",", ":")), '{"age":3,"name":"Ann"}']
    assert any(grammar_accepts(spec.grammar, text) for text in texts)
    with pytest.raises(EdgeAgentError):
        spec.validate({"name": "Ann"})


def test_closing_stays_where_it_is_sound():
    spec = schema_spec(
        {
            "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}}},
            "type": "object",
            "properties": {
                "at": {"$ref": "#/$defs/point"},
                "either": {"anyOf": [BASE, EXTENDED]},
                "one": {"oneOf": [{"type": "object", "properties": {"a": {}}}, {"type": "string"}]},
            },
        }
    )
    tightened = spec.json_schema
    assert tightened["additionalProperties"] is False
    assert tightened["$defs"]["point"]["additionalProperties"] is False  # a lone $ref
    branches = tightened["properties"]["either"]["anyOf"]
    assert [b["additionalProperties"] for b in branches] == [False, False]
    assert "additionalProperties" not in tightened["properties"]["one"]["oneOf"][0]


def test_a_required_key_that_is_not_listed_keeps_the_object_open():
    spec = schema_spec({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]})
    assert "additionalProperties" not in spec.json_schema
    spec.validate({"a": 1, "b": 2})


@pytest.mark.parametrize("declared", [[], {"a": 1}, 5])
def test_a_non_string_schema_declaration_is_invalid_request(declared):
    with pytest.raises(EdgeAgentError) as info:
        schema_spec({"$schema": declared, "type": "string"})
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_compile_contract_runs_in_worker_threads():
    schemas = [
        {"type": "object", "properties": {f"k{i}": {"type": "string", "pattern": f"^x{i}$"}}}
        for i in range(16)
    ]

    async def compile_all():
        return await asyncio.gather(
            *(
                asyncio.to_thread(compile_contract, CATALOG, schema=s, limits=SchemaLimits())
                for s in schemas
            ),
            asyncio.to_thread(
                compile_contract, CATALOG, action_names=["notify"], limits=SchemaLimits()
            ),
        )

    *specs, actions = asyncio.run(compile_all())
    for i, spec in enumerate(specs):
        spec.validate({f"k{i}": f"x{i}"})
        with pytest.raises(EdgeAgentError):
            spec.validate({f"k{i}": f"x{i}!"})
    assert actions.allowed_actions == ("notify",)
    with pytest.raises(EdgeAgentError) as info:
        compile_contract(CATALOG, action_names=["launch_rocket"], limits=SchemaLimits())
    assert info.value.code is ErrorCode.UNKNOWN_ACTION
