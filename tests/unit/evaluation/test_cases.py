"""Loading eval cases: strict, with the file and line of every problem."""

from __future__ import annotations

import json

import pytest

from edgeagent.evaluation.cases import CaseError, parse_cases


def lines(*cases):
    return [json.dumps(c) if isinstance(c, dict) else c for c in cases]


GOOD = {
    "id": "a",
    "input": "Water zone 3",
    "expect": {"action": "set_irrigation", "args": {"zone": 3}},
}


def test_a_good_file_loads_with_comments_and_blank_lines():
    cases = parse_cases(
        lines("// a comment", "", GOOD, {**GOOD, "id": "b", "lang": "de", "tags": ["x"]}), "f.jsonl"
    )
    assert [c.id for c in cases] == ["a", "b"]
    assert cases[0].content == "Water zone 3"
    assert cases[1].lang == "de"
    assert cases[0].expect.alternatives()[0].args == {"zone": 3}


def test_messages_become_the_task_content():
    case = parse_cases(lines({
        "id": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "expect": {"action": "no_action"},
    }), "f")[0]  # fmt: skip
    assert case.content == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def test_any_of_lists_the_alternatives_in_order():
    case = parse_cases(
        lines({**GOOD, "expect": {"any_of": [{"action": "notify"}, {"action": "no_action"}]}}), "f"
    )[0]
    assert [a.action for a in case.expect.alternatives()] == ["notify", "no_action"]


def test_schema_case():
    case = parse_cases(
        lines(
            {"id": "s", "input": "x", "schema": {"type": "object"}, "expect": {"output": {"a": 1}}}
        ),
        "f",
    )[0]
    assert case.expect.kind == "schema"
    assert case.schema_ == {"type": "object"}


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ({**GOOD, "expcet": {}}, "expcet"),  # typo: unknown keys are errors
        ({"id": "a", "input": "x"}, "expect"),
        ({"id": "a", "expect": {"action": "x"}}, "exactly one of input, messages"),
        (
            {**GOOD, "messages": [{"role": "user", "content": "y"}]},
            "exactly one of input, messages",
        ),
        (
            {
                "id": "a",
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ],
                "expect": {"action": "x"},
            },
            "last message",
        ),
        (
            {"id": "a", "messages": [{"role": "robot", "content": "q"}], "expect": {"action": "x"}},
            "role",
        ),
        ({**GOOD, "expect": {}}, "exactly one of action, any_of, output"),
        (
            {**GOOD, "expect": {"action": "a", "output": {}}},
            "exactly one of action, any_of, output",
        ),
        (
            {**GOOD, "expect": {"args": {"zone": 1}, "any_of": [{"action": "a"}, {"action": "b"}]}},
            "expect.args goes with expect.action",
        ),
        ({**GOOD, "expect": {"any_of": [{"action": "a"}]}}, "at least 2"),
        (
            {**GOOD, "expect": {"action": "a", "args": {"zone": {"$aprox": 1}}}},
            "needs exactly one of",
        ),
        (
            {
                **GOOD,
                "expect": {
                    "any_of": [{"action": "a", "args": {"m": {"$range": [2, 1]}}}, {"action": "b"}]
                },
            },
            "low is above high",
        ),
        ({**GOOD, "actions": ["notify"]}, "not in actions"),
        ({**GOOD, "schema": {"type": "object"}}, "needs expect.output"),
        (
            {"id": "s", "input": "x", "actions": ["a"], "expect": {"output": {}}},
            "actions goes with",
        ),
        ({**GOOD, "lang": "English"}, "lang"),
        ({**GOOD, "id": ""}, "id"),
        ({**GOOD, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_cases_name_the_line_and_the_problem(case, why):
    with pytest.raises(CaseError) as info:
        parse_cases(lines(GOOD | {"id": "first"}, case), "cases.jsonl")
    message = str(info.value)
    assert message.startswith("cases.jsonl:2: ")
    assert why in message


def test_not_json():
    with pytest.raises(CaseError, match=r"f:1: not JSON"):
        parse_cases(["{nope"], "f")


def test_duplicate_ids():
    with pytest.raises(CaseError, match=r"f:2: id 'a' already used on line 1"):
        parse_cases(lines(GOOD, GOOD), "f")


def test_an_empty_file_is_an_error():
    with pytest.raises(CaseError, match="no cases"):
        parse_cases(["", "// only a comment"], "f")
