"""`edgeagent eval --calibrate`: gate floors that reach a false-actuation target.

From the scored cases of one catalog, propose an act floor (`[catalog]
min_act_confidence`) and per-action `min_confidence` values under which at most
`target` of the "nothing to do" cases would have an action dispatched, holding as few
right actions as that takes. Greedy: while the false-actuation rate is above target,
take the raise (one action's floor, or the act floor, to just above a falsely
dispatched answer's score) that holds the fewest right actions per false actuation it
removes. Answers held for other reasons (cut short, unsupported arguments) stay held.

First, when the cases have injections (tagged "injection") and the instruction screen
scored their answers: the screen's ceiling (`[catalog] max_instruction_score`) that holds
every injection answered with an action, the highest that does (so it holds as few
requests as it can); the floors are then fitted with that ceiling in place.

The proposal is fitted to the cases given: check it on cases it was not fitted on
(docs/evaluation.md). Printed as a TOML snippet with the dispatch rate it costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgeagent.evaluation.scoring import CaseScore

TARGET_FALSE_ACTUATION = 0.03
# Held by what the proposal sets: the floors, and the screen's ceiling.
_FLOOR_KEYS = {"confidence", "act_confidence", "confidence_unknown", "instruction_like"}


@dataclass(frozen=True, slots=True)
class _Answer:
    action: str
    confidence: float
    act: float  # calibrated act score; 1.0 when the catalog has none
    right: bool
    false: bool  # acted on a "nothing to do" case
    held_anyway: bool  # held for a reason no floor changes
    screened: float | None = None  # the instruction screen's score
    injection: bool = False  # an injection case answered with an action


@dataclass(slots=True)
class Proposal:
    set_name: str
    act_floor: float | None
    floors: dict[str, float] = field(default_factory=dict)
    ceiling: float | None = None  # max_instruction_score; None: the injections do not set one
    ceiling_holds_right: int = 0  # right answers the ceiling alone holds
    noop_cases: int = 0
    false_before: int = 0
    false_after: int = 0
    acted: int = 0  # answers naming an action (not "nothing to do")
    dispatched_before: int = 0
    dispatched_after: int = 0
    right_before: int = 0  # right answers dispatched
    right_after: int = 0
    right_total: int = 0  # right answers naming an action

    def toml(self) -> str:
        """The snippet to paste into the catalog, with what it does as comments."""

        def pct(n: int, d: int) -> str:
            return "n/a" if d == 0 else f"{n}/{d} ({100 * n / d:.1f} %)"

        noop, acted, right = self.noop_cases, self.acted, self.right_total
        false = f"{pct(self.false_before, noop)} -> {pct(self.false_after, noop)}"
        sent = f"{pct(self.dispatched_before, acted)} -> {pct(self.dispatched_after, acted)}"
        kept = f"{pct(self.right_before, right)} -> {pct(self.right_after, right)}"
        lines = [
            f"# {self.set_name}: false actuation dispatched {false}",
            f"#   actions dispatched {sent}; right actions dispatched {kept}",
            "[catalog]",
            f"min_act_confidence = {self.act_floor}"
            if self.act_floor is not None
            else "# min_act_confidence: not needed",
        ]
        if self.ceiling is not None:
            lines.append(
                f"max_instruction_score = {self.ceiling}  # holds every injection case; "
                f"alone it holds {self.ceiling_holds_right} right answers"
            )
        for name, floor in sorted(self.floors.items()):
            lines += ["", "[[actions]]  # merge into this action's entry", f'name = "{name}"']
            lines.append(f"min_confidence = {floor}")
        return "\n".join(lines) + "\n"


def _answers(scores: Sequence[CaseScore]) -> list[_Answer]:
    answers = []
    for s in scores:
        outcome = s.outcome
        if s.kind != "action" or not s.acted or outcome.confidence is None:
            continue
        answers.append(
            _Answer(
                action=str(s.predicted),
                confidence=outcome.confidence,
                act=1.0 if outcome.act_confidence is None else outcome.act_confidence,
                right=s.right,
                false=s.noop_expected,
                held_anyway=outcome.held is not None and outcome.held not in _FLOOR_KEYS,
                screened=outcome.instruction_score,
                injection="injection" in s.tags and not s.right,
            )
        )
    return answers


def _above(value: float) -> float:
    """The smallest 3-decimal floor that holds `value`."""
    return math.floor(value * 1000 + 1) / 1000


def _passes(
    a: _Answer, floors: dict[str, float], act_floor: float, ceiling: float | None = None
) -> bool:
    if ceiling is not None and a.screened is not None and a.screened >= ceiling:
        return False
    return not a.held_anyway and a.confidence >= floors.get(a.action, 0.0) and a.act >= act_floor


def _ceiling(answers: Sequence[_Answer]) -> float | None:
    """The highest 3-decimal screen ceiling that holds every injection answered with an
    action the screen scored (None: no such answer)."""
    scores = [a.screened for a in answers if a.injection and a.screened is not None]
    return math.floor(min(scores) * 1000) / 1000 if scores else None


def propose(
    set_name: str, scores: Sequence[CaseScore], target: float = TARGET_FALSE_ACTUATION
) -> Proposal:
    """Floors for one catalog's scored cases (see the module doc)."""
    answers = _answers(scores)
    noop_cases = sum(1 for s in scores if s.kind == "action" and s.noop_expected)
    has_act = any(s.outcome.act_confidence is not None for s in scores)
    floors: dict[str, float] = {}
    act_floor = 0.0
    ceiling = _ceiling(answers)

    def count(fl: dict[str, float], af: float) -> tuple[int, int]:
        kept = [a for a in answers if _passes(a, fl, af, ceiling)]
        return sum(a.false for a in kept), sum(a.right for a in kept)

    false, right = count(floors, act_floor)
    proposal = Proposal(set_name, None, noop_cases=noop_cases, acted=len(answers))
    proposal.ceiling = ceiling
    proposal.ceiling_holds_right = sum(
        a.right and _passes(a, {}, 0.0) and not _passes(a, {}, 0.0, ceiling) for a in answers
    )
    proposal.false_before = sum(a.false and _passes(a, {}, 0.0) for a in answers)
    proposal.right_before = sum(a.right and _passes(a, {}, 0.0) for a in answers)
    proposal.dispatched_before = sum(_passes(a, {}, 0.0) for a in answers)
    proposal.right_total = sum(a.right for a in answers)
    while noop_cases and false / noop_cases > target:
        best: tuple[float, dict[str, float], float] | None = None
        for bad in (a for a in answers if a.false and _passes(a, floors, act_floor)):
            moves = [({**floors, bad.action: _above(bad.confidence)}, act_floor)]
            if has_act:
                moves.append((floors, _above(bad.act)))
            for new_floors, new_act in moves:
                new_false, new_right = count(new_floors, new_act)
                cost = (right - new_right) / max(false - new_false, 1e-9)
                if best is None or cost < best[0]:
                    best = (cost, new_floors, new_act)
        if best is None:
            break
        _, floors, act_floor = best
        false, right = count(floors, act_floor)
    proposal.floors = floors
    proposal.act_floor = act_floor if act_floor > 0.0 else None
    proposal.false_after, proposal.right_after = false, right
    proposal.dispatched_after = sum(_passes(a, floors, act_floor, ceiling) for a in answers)
    return proposal
