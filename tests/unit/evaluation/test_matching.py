"""Expected values and matchers of eval cases."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeagent.evaluation.matching import check_expected, match


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (20, 20),
        (20, 20.0),
        ("roof", "roof"),
        (True, True),
        (None, None),
        ({"zone": 3}, {"zone": 3, "minutes": 20}),  # partial: unlisted keys are free
        ([1, {"a": 2}], [1, {"a": 2, "b": 3}]),
        ({"$approx": 60, "$tol": 5}, 57),
        ({"$approx": 100, "$rel": 0.1}, 109.5),
        ({"$range": [15, 30]}, 15),
        ({"$one_of": [30, 45]}, 45),
        ({"$one_of": ["warning", {"$contains": "crit"}]}, "critical"),
        ({"$contains": "frost"}, "FROST tonight"),
        ({"$contains": ["gel", "霜"]}, "今晚有霜冻"),
        ({"$regex": r"^pump\d$"}, "pump3"),
        ({"$any": True}, [1, 2]),
        ({"args": {"minutes": {"$approx": 60, "$tol": 0}}}, {"args": {"minutes": 60}}),
    ],
)
def test_matches(expected, actual):
    check_expected(expected)
    assert match(expected, actual) == []


@pytest.mark.parametrize(
    ("expected", "actual", "why"),
    [
        (60, 1, "expected 60, got 1"),
        (1, True, "expected 1, got True"),  # true is not a number in an answer
        (True, 1, "expected True, got 1"),
        ("roof", "Roof", 'expected "roof"'),  # enums are exact
        (None, 0, "expected None"),
        ({"zone": 3}, {"minutes": 3}, "zone: missing"),
        ({"zone": 3}, [3], "expected an object"),
        ([1, 2], [1], "expected 2 items"),
        ({"$approx": 60, "$tol": 5}, 66, "expected 60 ± 5"),
        ({"$approx": 60}, "60", "expected 60"),
        ({"$range": [15, 30]}, 31, "expected 15..30"),
        ({"$one_of": [30, 45]}, 40, "expected one of"),
        ({"$contains": "frost"}, "cold night", "containing"),
        ({"$contains": "frost"}, 3, "containing"),
        ({"$regex": "^pump"}, "the pump", "matching /^pump/"),
    ],
)
def test_mismatches_say_why(expected, actual, why):
    problems = match(expected, actual, "args.x")
    assert len(problems) == 1
    assert why in problems[0]
    assert problems[0].startswith("args.x")


def test_nested_mismatch_names_the_path():
    assert match({"args": {"minutes": 60}}, {"args": {"minutes": 1}}) == [
        "args.minutes: expected 60, got 1"
    ]


@pytest.mark.parametrize(
    ("expected", "why"),
    [
        ({"$aprox": 60}, "needs exactly one of"),
        ({"$approx": 60, "zone": 1}, "only $-keys"),
        ({"$approx": 60, "$range": [1, 2]}, "needs exactly one of"),
        ({"$range": [5, 1]}, "low is above high"),
        ({"$range": [5]}, "[low, high]"),
        ({"$approx": "60"}, "must be numbers"),
        ({"$approx": 60, "$tol": -1}, "tolerances >= 0"),
        ({"$one_of": []}, "non-empty"),
        ({"$one_of": [{"$bad": 1}]}, "needs exactly one of"),
        ({"$contains": ""}, "text or a list"),
        ({"$regex": "("}, "not a regular expression"),
        ({"$any": 1}, '"$any": true'),
        ({"$contains": "x", "$tol": 1}, "not allowed with $contains"),
        ({"outer": [{"$oops": 1}]}, "outer[0]"),
    ],
)
def test_malformed_expected_values_are_refused(expected, why):
    with pytest.raises(ValueError, match=None) as info:
        check_expected(expected)
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("(?=pump)", "needs backtracking"),  # look-around: RE2 cannot, so neither can we
        (r"(a)\1", "needs backtracking"),  # a back-reference
        ("a" * 257, "257 characters long, the limit is 256"),
        (["^pump"], "must be a text"),
    ],
)
def test_regexes_without_a_linear_time_match_are_refused(pattern, why):
    with pytest.raises(ValueError, match=None) as info:
        check_expected({"$regex": pattern})
    assert why in str(info.value)


def test_a_catastrophic_regex_runs_in_linear_time():
    """`(a+)+$` against a's and one mismatch: a backtracking engine tries 2**n splits
    (Python's re took 3.4 s at 26 characters, and doubles with each one more); RE2
    answers at once. Run in a child process so a regression ends as a failure, not as
    a test run that never ends."""
    code = (
        "from edgeagent.evaluation.matching import check_expected, match\n"
        "expected = {'$regex': '^(a+)+$'}\n"
        "check_expected(expected)\n"
        "print(match(expected, 'a' * 64 + '!'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "expected text matching /^(a+)+$/" in done.stdout
