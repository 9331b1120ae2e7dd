"""`eval --calibrate`: floors that bring false actuation under a target at least cost."""

from __future__ import annotations

import json

from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.floors import propose
from edgeagent.evaluation.metrics import summarize
from edgeagent.evaluation.runner import Outcome
from edgeagent.evaluation.scoring import score

NOOP = {"action": "no_action"}
WATER = {"action": "set_irrigation", "args": {"zone": 3, "minutes": 20}}
FAN = {"action": "set_fan", "args": {"speed": 50}}


def scored(expect, output, confidence, act, *, held=None, tags=(), screened=None):
    case = parse_cases(
        [json.dumps({"id": "c", "input": "x", "expect": expect, "tags": list(tags)})], "f"
    )[0]
    outcome = Outcome(
        output, confidence=confidence, act_confidence=act, held=held, instruction_score=screened
    )
    return score(case, outcome, "gh", "no_action")


def cases():
    return [
        # right actions, sure of themselves
        *(scored(WATER, WATER, 0.95, 0.9) for _ in range(6)),
        scored(FAN, FAN, 0.6, 0.8),
        # "nothing to do" cases: two acted on, one with a low act score, one sure
        scored(NOOP, WATER, 0.97, 0.3),
        scored(NOOP, FAN, 0.55, 0.85),
        *(scored(NOOP, NOOP, 0.9, 0.1) for _ in range(5)),
        # held for a reason no floor changes: stays held, costs nothing
        scored(NOOP, WATER, 0.99, 0.99, held="unsupported_argument"),
    ]


def test_the_cheapest_floors_reach_the_target():
    proposal = propose("gh", cases(), target=0.0)
    assert proposal.noop_cases == 8
    assert (proposal.false_before, proposal.false_after) == (2, 0)
    # The act floor holds the water on a no-op case without touching a right action
    # (a water floor would hold all six right ones); the fan's own floor holds the
    # other (an act floor of 0.851 would hold the right fan too).
    assert proposal.act_floor == 0.301
    assert proposal.floors == {"set_fan": 0.551}
    assert (proposal.right_before, proposal.right_after, proposal.right_total) == (7, 7, 7)
    assert (proposal.dispatched_before, proposal.dispatched_after) == (9, 7)
    snippet = proposal.toml()
    assert "min_act_confidence = 0.301" in snippet
    assert 'name = "set_fan"\nmin_confidence = 0.551' in snippet
    assert "2/8 (25.0 %) -> 0/8 (0.0 %)" in snippet


def test_a_loose_target_proposes_nothing():
    proposal = propose("gh", cases(), target=0.5)
    assert proposal.act_floor is None
    assert proposal.floors == {}
    assert proposal.false_after == proposal.false_before == 2


def test_dispatched_injections_are_their_own_row():
    summary = summarize(
        [
            scored(NOOP, WATER, 0.9, 0.9, tags=["injection"]),
            scored(NOOP, WATER, 0.9, 0.9, held="confidence", tags=["injection"]),
            scored(NOOP, NOOP, 0.9, 0.1, tags=["injection"]),
            scored(WATER, WATER, 0.9, 0.9),
        ]
    )
    assert (summary.injections_dispatched.hits, summary.injections_dispatched.total) == (1, 3)
    assert (summary.dispatch_rate.hits, summary.dispatch_rate.total) == (2, 3)


def test_the_screen_ceiling_holds_every_injection_and_as_few_requests_as_it_can():
    answers = [
        *(scored(WATER, WATER, 0.95, 0.9, screened=0.05) for _ in range(4)),
        scored(WATER, WATER, 0.95, 0.9, screened=0.5),  # a forceful request
        scored(NOOP, WATER, 0.9, 0.9, tags=["injection"], screened=0.62),
        # held by the catalog's ceiling in this run: the proposal decides again
        scored(NOOP, FAN, 0.9, 0.9, tags=["injection"], screened=0.951, held="instruction_like"),
        scored(NOOP, NOOP, 0.9, 0.1, tags=["injection"]),  # answered right: sets nothing
        *(scored(NOOP, NOOP, 0.9, 0.1) for _ in range(4)),
    ]
    proposal = propose("gh", answers, target=0.0)
    assert proposal.ceiling == 0.62
    assert proposal.ceiling_holds_right == 0
    assert (proposal.false_before, proposal.false_after) == (2, 0)
    assert proposal.floors == {}
    assert proposal.act_floor is None
    assert "max_instruction_score = 0.62" in proposal.toml()
    # An injection the screen scored lower than a request: holding it costs the request.
    answers.append(scored(NOOP, WATER, 0.9, 0.9, tags=["injection"], screened=0.4))
    proposal = propose("gh", answers, target=0.0)
    assert proposal.ceiling == 0.4
    assert proposal.ceiling_holds_right == 1
    assert proposal.right_after == 4


def test_without_screened_injections_no_ceiling_is_proposed():
    proposal = propose("gh", cases(), target=0.0)
    assert proposal.ceiling is None
    assert "max_instruction_score" not in proposal.toml()


def test_what_the_screen_held_is_its_own_row():
    summary = summarize(
        [
            scored(NOOP, WATER, 0.9, 0.9, held="instruction_like", tags=["injection"]),
            scored(WATER, WATER, 0.9, 0.9, held="instruction_like"),  # a request it held
            scored(WATER, WATER, 0.9, 0.9, held="confidence"),
            scored(WATER, WATER, 0.9, 0.9),
        ]
    )
    assert (summary.held.hits, summary.held.total) == (3, 4)
    assert (summary.held_by_screen.hits, summary.held_by_screen.total) == (2, 4)
    assert (summary.right_held_by_screen.hits, summary.right_held_by_screen.total) == (1, 2)
