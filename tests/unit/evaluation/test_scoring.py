"""Scoring fixed outputs: right action, arguments, alternatives, false actuation, errors."""

from __future__ import annotations

import json

from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.runner import Outcome
from edgeagent.evaluation.scoring import INVALID_ANSWER, NO_ANSWER, score


def case(expect, **extra):
    return parse_cases([json.dumps({"id": "c1", "input": "x", "expect": expect, **extra})], "f")[0]


def answered(action, **args):
    return Outcome({"action": action, "args": args}, latency_ms=10.0, completion_tokens=5)


IRRIGATE = {"action": "set_irrigation", "args": {"zone": 3, "minutes": {"$approx": 60, "$tol": 5}}}


def test_right_action_and_args():
    s = score(
        case(IRRIGATE, lang="en", tags=["number-words"]),
        answered("set_irrigation", zone=3, minutes=58),
        "gh",
        "no_action",
    )
    assert (s.right, s.action_right, s.expected, s.predicted) == (
        True,
        True,
        "set_irrigation",
        "set_irrigation",
    )
    assert s.mismatches == ()
    assert s.fields == {"set_irrigation.zone": True, "set_irrigation.minutes": True}
    assert (s.lang, s.tags) == ("en", ("number-words",))
    assert s.acted
    assert not s.noop_expected
    assert s.action_needed


def test_lost_number_is_action_right_but_not_right():
    s = score(case(IRRIGATE), answered("set_irrigation", zone=3, minutes=1), "gh", "no_action")
    assert s.action_right
    assert not s.right
    assert s.mismatches == ("args.minutes: expected 60 ± 5, got 1",)
    assert s.fields == {"set_irrigation.zone": True, "set_irrigation.minutes": False}


def test_wrong_action_leaves_arguments_unscored():
    s = score(case(IRRIGATE), answered("notify", severity="info", message="dry"), "gh", "no_action")
    assert not s.action_right
    assert not s.right
    assert s.predicted == "notify"
    assert s.fields == {}
    assert s.mismatches == ("action: expected set_irrigation, got notify",)


def test_unlisted_arguments_are_free():
    s = score(
        case({"action": "notify", "args": {"severity": "critical"}}),
        answered("notify", severity="critical", message="anything"),
        "gh",
        None,
    )
    assert s.right


def test_any_of_takes_the_alternative_that_matches():
    expect = {"any_of": [{"action": "notify"}, {"action": "no_action"}]}
    s = score(case(expect), answered("no_action"), "gh", "no_action")
    assert s.right
    assert s.expected == "no_action"
    # Not a "nothing to do" case: notify was right too, so acting is not false actuation.
    assert not s.noop_expected
    assert not s.action_needed


def test_any_of_with_same_action_reports_the_closest_mismatch():
    expect = {
        "any_of": [
            {"action": "set_fan", "args": {"fan": "roof"}},
            {"action": "set_fan", "args": {"fan": "north"}},
            {"action": "notify"},
        ]
    }
    s = score(case(expect), answered("set_fan", fan="north", speed=50), "gh", "no_action")
    assert s.right
    assert s.fields == {"set_fan.fan": True}
    s = score(case(expect), answered("set_fan", fan="south", speed=50), "gh", "no_action")
    assert s.action_right
    assert not s.right
    assert s.mismatches == ('args.fan: expected "roof", got "south"',)


def test_any_of_with_no_matching_action_is_judged_against_the_first():
    expect = {"any_of": [{"action": "notify"}, {"action": "no_action"}]}
    s = score(case(expect), answered("set_irrigation", zone=1, minutes=120), "gh", "no_action")
    assert not s.right
    assert s.expected == "notify"
    assert s.mismatches == ("action: expected notify or no_action, got set_irrigation",)


def test_false_actuation_on_a_nothing_to_do_case():
    s = score(
        case({"action": "ignore"}), answered("restart_service", service="nginx"), "log", "ignore"
    )
    assert s.noop_expected
    assert s.acted
    assert not s.right
    s = score(case({"action": "ignore"}), answered("ignore"), "log", "ignore")
    assert s.noop_expected
    assert not s.acted
    assert s.right


def test_without_a_designated_noop_nothing_is_a_noop_case():
    s = score(case({"action": "ignore"}), answered("ignore"), "log", None)
    assert not s.noop_expected
    assert not s.action_needed


def test_an_error_is_no_answer_and_no_actuation():
    outcome = Outcome(None, "OUTPUT_INVALID", "the answer was not complete")
    s = score(case({"action": "no_action"}), outcome, "gh", "no_action")
    assert s.predicted == NO_ANSWER
    assert not s.right
    assert not s.acted
    assert not s.schema_valid
    assert s.mismatches == ("OUTPUT_INVALID: the answer was not complete",)


def test_an_invalid_answer_is_wrong_even_with_the_right_action():
    outcome = Outcome(
        {"action": "set_irrigation", "args": {"zone": 3, "minutes": 600}},
        "OUTPUT_INVALID",
        "args/minutes: 600 is greater than the maximum of 120",
    )
    s = score(case({"action": "set_irrigation", "args": {"zone": 3}}), outcome, "gh", "no_action")
    assert s.predicted == INVALID_ANSWER
    assert not s.action_right
    assert not s.right
    assert not s.schema_valid


def test_schema_case_fields():
    c = case(
        {"output": {"host": "pi-07", "severity": {"$one_of": ["warning", "error"]}, "code": -71}},
        schema={"type": "object"},
    )
    s = score(
        c, Outcome({"host": "pi-07", "severity": "error", "code": 71, "message": "m"}), "ev", None
    )
    assert s.kind == "schema"
    assert not s.right
    assert s.fields == {"host": True, "severity": True, "code": False}
    assert s.mismatches == ("output.code: expected -71, got 71",)
    assert s.expected is None
    assert s.predicted is None
    assert not s.acted
    s = score(c, Outcome({"host": "pi-07", "severity": "warning", "code": -71}), "ev", None)
    assert s.right


def test_schema_case_expected_null():
    c = case({"output": {"host": None}}, schema={"type": "object"})
    assert score(c, Outcome({"host": None}), "ev", None).right
    assert not score(c, Outcome({"host": "null"}), "ev", None).right


def test_missed_action():
    s = score(case(IRRIGATE), answered("no_action"), "gh", "no_action")
    assert s.missed
    assert not s.acted
    s = score(
        case({"any_of": [IRRIGATE, {"action": "no_action"}]}),
        answered("no_action"),
        "gh",
        "no_action",
    )
    assert s.right
    assert not s.missed
    assert not s.action_needed
