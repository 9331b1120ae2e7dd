"""Aggregating case scores: rates, breakdowns, confusion, latency, calibration."""

from __future__ import annotations

import json

import pytest

from edgeagent.evaluation.calibration import auroc, calibrate
from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.metrics import Rate, percentile, summarize
from edgeagent.evaluation.report import render_text
from edgeagent.evaluation.runner import Outcome
from edgeagent.evaluation.scoring import score


def scored(
    expect,
    output,
    *,
    lang="en",
    tags=(),
    set_name="gh",
    no_action="no_action",
    error=None,
    latency=100.0,
    confidence=None,
):
    c = parse_cases(
        [json.dumps({"id": "c", "input": "x", "expect": expect, "lang": lang, "tags": list(tags)})],
        "f",
    )[0]
    outcome = Outcome(output, error, "boom" if error else None, latency_ms=latency, prompt_tokens=300,
                      cached_prompt_tokens=250, completion_tokens=0 if error else 10, confidence=confidence)  # fmt: skip
    return score(c, outcome, set_name, no_action)


def act(action, **args):
    return {"action": action, "args": args}


NOOP = {"action": "no_action"}
WATER = {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}


@pytest.fixture
def scores():
    return [
        scored(WATER, act("set_irrigation", zone=3, minutes=20), lang="en", latency=100),
        scored(
            WATER,
            act("set_irrigation", zone=3, minutes=1),
            lang="de",
            tags=["number-words"],
            latency=200,
        ),
        scored(WATER, act("no_action"), lang="zh", latency=300),
        scored(NOOP, act("no_action"), lang="en", latency=400),
        scored(NOOP, act("notify", severity="info", message="ok"), lang="de", latency=500),
        scored(NOOP, None, lang="zh", error="OUTPUT_INVALID"),
        scored(
            {"action": "ignore"}, act("ignore"), set_name="log", no_action="ignore", latency=600
        ),
    ]


def test_headline_rates(scores):
    s = summarize(scores, {"gh": "no_action", "log": "ignore"})
    assert s.cases == 7
    assert s.right == Rate(3, 7)
    assert s.action_right == Rate(4, 7)
    assert s.args_given_action == Rate(3, 4)
    assert s.schema_valid == Rate(6, 7)
    # Four "nothing to do" cases; one notify was sent. The failed one did not act.
    assert s.false_actuation == Rate(1, 4)
    # Three cases needed an action; one answered no_action.
    assert s.missed_action == Rate(1, 3)
    assert s.errors == {"OUTPUT_INVALID": 1}


def test_breakdowns(scores):
    s = summarize(scores, {"gh": "no_action", "log": "ignore"})
    assert s.by_lang == {"de": Rate(0, 2), "en": Rate(3, 3), "zh": Rate(0, 2)}
    assert s.by_set == {"gh": Rate(2, 6), "log": Rate(1, 1)}
    assert s.by_tag["number-words"] == Rate(0, 1)
    assert s.by_tag["no-op"] == Rate(2, 4)
    assert s.by_field["gh/set_irrigation.minutes"] == Rate(1, 2)
    assert s.by_field["gh/set_irrigation.zone"] == Rate(2, 2)
    water = s.by_action["gh/set_irrigation"]
    assert (water.expected, water.predicted, water.action_right, water.right) == (3, 2, 2, 1)
    noop = s.by_action["gh/no_action"]
    assert (noop.expected, noop.predicted, noop.action_right, noop.right) == (3, 2, 1, 1)
    assert s.by_action["gh/notify"].expected == 0


def test_confusion(scores):
    s = summarize(scores, {"gh": "no_action", "log": "ignore"})
    assert s.confusion["gh"] == {
        "no_action": {"(error)": 1, "no_action": 1, "notify": 1},
        "set_irrigation": {"no_action": 1, "set_irrigation": 2},
    }
    assert s.confusion["log"] == {"ignore": {"ignore": 1}}


def test_latency_counts_answered_cases_only(scores):
    lat = summarize(scores).latency
    assert lat is not None
    assert lat.median_ms == 350
    assert lat.p90_ms == pytest.approx(550)
    assert lat.mean_uncached_prompt_tokens == 50


def test_no_confidence_means_no_calibration(scores):
    assert summarize(scores).calibration is None
    assert summarize(scores).to_dict()["calibration"] is None


def test_json_form_is_serialisable(scores):
    data = summarize(scores, {"gh": "no_action", "log": "ignore"}).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["right"] == {"hits": 3, "total": 7, "rate": 0.4286}
    assert data["no_action"] == {"gh": "no_action", "log": "ignore"}
    assert data["by_action"]["gh/set_irrigation"]["recall"] == {
        "hits": 2,
        "total": 3,
        "rate": 0.6667,
    }


def test_percentile():
    assert percentile([5.0], 90) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([10.0, 0.0], 90) == 9.0


def test_auroc():
    assert auroc([(0.9, True), (0.8, True), (0.3, False)]) == 1.0
    assert auroc([(0.3, True), (0.9, False)]) == 0.0
    assert auroc([(0.5, True), (0.5, False)]) == 0.5
    assert auroc([(0.5, True)]) is None


def test_calibration_table():
    results = [(0.99, True)] * 6 + [
        (0.92, True),
        (0.92, False),
        (0.6, False),
        (0.3, False),
        (None, True),
    ]
    cal = calibrate(results)
    assert cal is not None
    assert (cal.n, cal.without) == (10, 1)
    by_range = {(b.low, b.high): b for b in cal.bins}
    assert by_range[(0.99, 1.0)].n == 6
    assert by_range[(0.99, 1.0)].accuracy == 1.0
    assert by_range[(0.9, 0.95)].accuracy == 0.5
    assert by_range[(0.0, 0.5)].n == 1
    assert by_range[(0.7, 0.8)].n == 0
    assert cal.ece == pytest.approx((6 * 0.01 + 2 * 0.42 + 0.6 + 0.3) / 10)
    cut = {c.threshold: c for c in cal.cuts}
    assert (cut[0.9].kept, cut[0.9].kept_right) == (8, 7)
    assert (cut[0.5].kept, cut[0.5].kept_right) == (9, 7)
    # 80 % of 10 = 8 answers: the 8th highest confidence is 0.92.
    assert (cal.keep_80.threshold, cal.keep_80.kept, cal.keep_80.kept_right) == (0.92, 8, 7)
    assert cal.to_dict()["keep_80"] == {
        "threshold": 0.92,
        "kept": 8,
        "kept_rate": 0.8,
        "accuracy": 0.875,
    }


def test_calibration_of_scores_reads_their_confidence():
    s = summarize([
        scored(WATER, act("set_irrigation", zone=3, minutes=20), confidence=0.95),
        scored(WATER, act("no_action"), confidence=0.4),
    ])  # fmt: skip
    assert s.calibration is not None
    assert s.calibration.auroc == 1.0


def test_false_actuation_as_chosen_and_as_dispatched():
    def held(expect, output, why):
        c = parse_cases([json.dumps({"id": "c", "input": "x", "expect": expect})], "f")[0]
        outcome = Outcome(output, latency_ms=1.0, completion_tokens=5, confidence=0.3, held=why)
        return score(c, outcome, "gh", "no_action")

    either = {"any_of": [{"action": "notify"}, {"action": "no_action"}]}
    scores = [
        held(NOOP, act("notify", severity="info", message="x"), "confidence"),  # held: harmless
        held(NOOP, act("notify", severity="info", message="x"), None),  # dispatched: false
        held(NOOP, act("no_action"), None),
        held(WATER, act("set_irrigation", zone=3, minutes=20), "confidence"),  # right, held
        held(WATER, act("set_irrigation", zone=3, minutes=20), None),  # right, dispatched
        held(WATER, act("set_irrigation", zone=4, minutes=20), None),  # wrong, dispatched
        held(either, act("set_irrigation", zone=1, minutes=5), "confidence_unknown"),
    ]
    s = summarize(scores)
    assert s.false_actuation == Rate(2, 3)
    assert s.false_dispatch == Rate(1, 3)
    assert s.held == Rate(3, 6)
    assert s.dispatched_right == Rate(1, 3)
    # Held counts as nothing done: right where "nothing to do" is right.
    assert s.right_as_dispatched == Rate(4, 7)
    assert s.to_dict()["false_dispatch"] == {"hits": 1, "total": 3, "rate": 0.3333}
    text = render_text([("sys", s)])
    assert "false actuation, dispatched" in text
    assert "right among dispatched" in text
