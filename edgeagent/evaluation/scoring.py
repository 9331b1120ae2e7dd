"""Scoring one answer against one case's expectation.

An action case is *right* when the answer names an expected action and its arguments
match that alternative's listed arguments; *action right* when only the name matches.
With several alternatives (`any_of`) the best one is taken: one that matches fully,
else the first with the same action (so its argument mismatches are reported), else
the first one (it is the row of the confusion matrix).

A case counts for the false-actuation rate when every right answer is the set's
"nothing to do" action: then any other action is an actuation nobody asked for. The
rate is reported as chosen (any other action) and as dispatched (the daemon would not
hold it: `Outcome.held`, from the catalog's `min_confidence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeagent.evaluation.cases import ActionExpect, Case
from edgeagent.evaluation.matching import match
from edgeagent.evaluation.runner import Outcome

# What the confusion matrix shows when there was no usable answer.
NO_ANSWER = "(error)"
INVALID_ANSWER = "(invalid)"


@dataclass(frozen=True, slots=True)
class CaseScore:
    set_name: str
    case_id: str
    kind: str  # "action" or "schema"
    lang: str | None
    tags: tuple[str, ...]
    expected: str | None  # the expected action (confusion row); None for schema cases
    predicted: str | None  # the answered action, NO_ANSWER or INVALID_ANSWER
    right: bool  # action and arguments (or every expected field) right
    action_right: bool
    noop_expected: bool  # only the "nothing to do" action is right
    action_needed: bool  # "nothing to do" exists and is not among the right answers
    acted: bool  # answered an action other than "nothing to do"
    missed: bool  # answered "nothing to do" where an action was needed
    mismatches: tuple[str, ...]
    # "nothing to do" is among the right answers: holding a wrong action is then right.
    noop_allowed: bool = False
    # Expected argument (or schema field) names -> matched, for per-argument accuracy;
    # only filled when the action was right, since otherwise the arguments are moot.
    fields: dict[str, bool] = field(default_factory=dict)
    outcome: Outcome = field(default_factory=lambda: Outcome(None))

    @property
    def answered(self) -> bool:
        return self.outcome.error is None

    @property
    def held(self) -> bool:
        """The daemon would hold this action answer (not dispatch it)."""
        return self.acted and self.outcome.held is not None

    @property
    def dispatched(self) -> bool:
        """An action other than "nothing to do" that the daemon would let out."""
        return self.acted and self.outcome.held is None

    @property
    def right_as_dispatched(self) -> bool:
        """Right once holding is applied: a held action means nothing was done, which is
        right where "nothing to do" is."""
        return self.noop_allowed if self.held else self.right

    @property
    def schema_valid(self) -> bool:
        """An answer came back and it validates (a failed run is not schema-valid either)."""
        return self.outcome.error is None


def _field_results(expected: dict[str, Any], actual: Any) -> dict[str, bool]:
    actual = actual if isinstance(actual, dict) else {}
    return {
        name: name in actual and not match(value, actual[name], name)
        for name, value in expected.items()
    }


def _pick(
    alternatives: list[ActionExpect], action: str | None, args: Any
) -> tuple[ActionExpect, list[str]]:
    """The alternative the answer is judged against, with its mismatches."""
    same_action = [a for a in alternatives if a.action == action]
    for alternative in same_action:
        problems = match(alternative.args, args, "args")
        if not problems:
            return alternative, []
    if same_action:
        return same_action[0], match(same_action[0].args, args, "args")
    return alternatives[0], [f"action: expected {_names(alternatives)}, got {action}"]


def _names(alternatives: list[ActionExpect]) -> str:
    return " or ".join(dict.fromkeys(a.action for a in alternatives))


def score_action(case: Case, outcome: Outcome, set_name: str, no_action: str | None) -> CaseScore:
    alternatives = case.expect.alternatives()
    noop_expected = no_action is not None and all(a.action == no_action for a in alternatives)
    action_needed = no_action is not None and all(a.action != no_action for a in alternatives)
    output = outcome.output if isinstance(outcome.output, dict) else {}
    if outcome.error is not None:
        predicted = INVALID_ANSWER if outcome.output is not None else NO_ANSWER
        chosen, problems = alternatives[0], [f"{outcome.error}: {outcome.error_message}"]
    else:
        predicted = str(output.get("action"))
        chosen, problems = _pick(alternatives, predicted, output.get("args"))
    action_right = outcome.error is None and predicted == chosen.action
    fields = _field_results(chosen.args, output.get("args")) if action_right else {}
    # A valid answer naming any action but "nothing to do" would have been dispatched.
    acted = outcome.error is None and predicted != no_action
    return CaseScore(
        set_name=set_name,
        case_id=case.id,
        kind="action",
        lang=case.lang,
        tags=tuple(case.tags),
        expected=chosen.action,
        predicted=predicted,
        right=action_right and not problems,
        action_right=action_right,
        noop_expected=noop_expected,
        action_needed=action_needed,
        acted=acted,
        missed=action_needed and outcome.error is None and predicted == no_action,
        mismatches=tuple(problems),
        noop_allowed=no_action is not None and any(a.action == no_action for a in alternatives),
        fields={f"{chosen.action}.{k}": v for k, v in fields.items()},
        outcome=outcome,
    )


def score_schema(case: Case, outcome: Outcome, set_name: str) -> CaseScore:
    expected = case.expect.output
    if outcome.error is not None:
        problems = [f"{outcome.error}: {outcome.error_message}"]
        fields: dict[str, bool] = {}
    else:
        problems = match(expected, outcome.output, "output")
        fields = _field_results(expected, outcome.output) if isinstance(expected, dict) else {}
    return CaseScore(
        set_name=set_name,
        case_id=case.id,
        kind="schema",
        lang=case.lang,
        tags=tuple(case.tags),
        expected=None,
        predicted=None,
        right=outcome.error is None and not problems,
        action_right=False,
        noop_expected=False,
        action_needed=False,
        acted=False,
        missed=False,
        mismatches=tuple(problems),
        fields=fields,
        outcome=outcome,
    )


def score(case: Case, outcome: Outcome, set_name: str, no_action: str | None) -> CaseScore:
    if case.expect.kind == "schema":
        return score_schema(case, outcome, set_name)
    return score_action(case, outcome, set_name, no_action)
