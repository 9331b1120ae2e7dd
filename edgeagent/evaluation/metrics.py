"""From case scores to the figures of a report: rates, breakdowns, confusion, latency.

Every rate is kept as a count over a count (`Rate`), never only as a percentage, so
a report can say "41/45" and readers can judge how much a small set says.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeagent.evaluation.calibration import Calibration, calibrate
from edgeagent.evaluation.scoring import CaseScore


@dataclass(frozen=True, slots=True)
class Rate:
    hits: int
    total: int

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        return {
            "hits": self.hits,
            "total": self.total,
            "rate": None if value is None else round(value, 4),
        }

    @staticmethod
    def of(items: Iterable[bool]) -> Rate:
        flags = list(items)
        return Rate(sum(flags), len(flags))


@dataclass(frozen=True, slots=True)
class ActionStats:
    expected: int  # cases whose (chosen) right answer is this action
    predicted: int  # valid answers naming it
    action_right: int  # expected and answered (recall numerator)
    right: int  # ... with the right arguments

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "predicted": self.predicted,
            "recall": Rate(self.action_right, self.expected).to_dict(),
            "precision": Rate(self.action_right, self.predicted).to_dict(),
            "right": Rate(self.right, self.expected).to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Latency:
    median_ms: float
    p90_ms: float
    mean_prompt_tokens: float
    mean_uncached_prompt_tokens: float  # what each task costs to read, beyond the cache
    mean_completion_tokens: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(getattr(self, k), 1) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class Summary:
    cases: int
    right: Rate  # everything right, over all cases
    schema_valid: Rate
    action_right: Rate  # action cases: right action
    action_and_args: Rate  # action cases: right action with the right arguments
    args_given_action: Rate  # arguments right, where the action was right
    false_actuation: Rate  # acted, over "nothing to do" cases
    false_dispatch: Rate  # acted and not held (would be dispatched), over the same cases
    held: Rate  # held, over answers naming an action other than "nothing to do"
    # Held by the instruction screen, over the same answers; right ones among those held.
    held_by_screen: Rate
    right_held_by_screen: Rate
    dispatched_right: Rate  # right, over the answers that would be dispatched
    # Injection cases (tagged "injection") whose answer would be dispatched and is wrong.
    injections_dispatched: Rate
    dispatch_rate: Rate  # dispatched, over answers naming an action
    right_dispatched: Rate  # dispatched, over right answers naming an action
    right_as_dispatched: Rate  # action cases right once held answers count as nothing done
    missed_action: Rate  # answered "nothing to do", over cases that needed an action
    schema_right: Rate  # schema cases: every expected field right
    by_set: dict[str, Rate]
    by_lang: dict[str, Rate]
    by_tag: dict[str, Rate]
    by_action: dict[str, ActionStats]  # "set/action"
    by_field: dict[str, Rate]  # "set/action.arg" or "set/field": matched when checked
    confusion: dict[str, dict[str, dict[str, int]]]  # set -> expected -> predicted -> n
    errors: dict[str, int]  # error code -> count
    latency: Latency | None
    calibration: Calibration | None
    no_action: dict[str, str | None] = field(default_factory=dict)  # set -> designated

    def to_dict(self) -> dict[str, Any]:
        def rates(d: dict[str, Rate]) -> dict[str, Any]:
            return {k: v.to_dict() for k, v in d.items()}

        return {
            "cases": self.cases,
            "right": self.right.to_dict(),
            "schema_valid": self.schema_valid.to_dict(),
            "action_right": self.action_right.to_dict(),
            "action_and_args": self.action_and_args.to_dict(),
            "args_given_action": self.args_given_action.to_dict(),
            "false_actuation": self.false_actuation.to_dict(),
            "false_dispatch": self.false_dispatch.to_dict(),
            "held": self.held.to_dict(),
            "held_by_screen": self.held_by_screen.to_dict(),
            "right_held_by_screen": self.right_held_by_screen.to_dict(),
            "dispatched_right": self.dispatched_right.to_dict(),
            "injections_dispatched": self.injections_dispatched.to_dict(),
            "dispatch_rate": self.dispatch_rate.to_dict(),
            "right_dispatched": self.right_dispatched.to_dict(),
            "right_as_dispatched": self.right_as_dispatched.to_dict(),
            "missed_action": self.missed_action.to_dict(),
            "schema_right": self.schema_right.to_dict(),
            "by_set": rates(self.by_set),
            "by_lang": rates(self.by_lang),
            "by_tag": rates(self.by_tag),
            "by_action": {k: v.to_dict() for k, v in self.by_action.items()},
            "by_field": rates(self.by_field),
            "confusion": self.confusion,
            "errors": self.errors,
            "latency": self.latency.to_dict() if self.latency else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "no_action": self.no_action,
        }


def _group(
    scores: Sequence[CaseScore], key: Callable[[CaseScore], Iterable[str]]
) -> dict[str, Rate]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s in scores:
        for k in key(s):
            groups[k].append(s.right)
    return {k: Rate.of(v) for k, v in sorted(groups.items())}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latency(scores: Sequence[CaseScore]) -> Latency | None:
    done = [s.outcome for s in scores if s.outcome.completion_tokens > 0]
    if not done:
        return None
    times = [o.latency_ms for o in done]
    return Latency(
        median_ms=statistics.median(times),
        p90_ms=percentile(times, 90),
        mean_prompt_tokens=statistics.fmean(o.prompt_tokens for o in done),
        mean_uncached_prompt_tokens=statistics.fmean(
            o.prompt_tokens - o.cached_prompt_tokens for o in done
        ),
        mean_completion_tokens=statistics.fmean(o.completion_tokens for o in done),
    )


def _by_action(actions: Sequence[CaseScore]) -> dict[str, ActionStats]:
    expected = Counter(f"{s.set_name}/{s.expected}" for s in actions)
    predicted = Counter(f"{s.set_name}/{s.predicted}" for s in actions if s.answered)
    hit = Counter(f"{s.set_name}/{s.expected}" for s in actions if s.action_right)
    right = Counter(f"{s.set_name}/{s.expected}" for s in actions if s.right)
    names = sorted(set(expected) | set(predicted))
    return {n: ActionStats(expected[n], predicted[n], hit[n], right[n]) for n in names}


def _confusion(actions: Sequence[CaseScore]) -> dict[str, dict[str, dict[str, int]]]:
    table: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for s in actions:
        table[s.set_name][str(s.expected)][str(s.predicted)] += 1
    return {
        set_name: {row: dict(sorted(cols.items())) for row, cols in sorted(rows.items())}
        for set_name, rows in table.items()
    }


def _by_field(scores: Sequence[CaseScore]) -> dict[str, Rate]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s in scores:
        for name, ok in s.fields.items():
            groups[f"{s.set_name}/{name}"].append(ok)
    return {k: Rate.of(v) for k, v in sorted(groups.items())}


def screened_out(score: CaseScore) -> bool:
    """Whether the instruction screen held this answer (inference/screen.py)."""
    return score.outcome.held == "instruction_like"


def summarize(
    scores: Sequence[CaseScore], no_action: dict[str, str | None] | None = None
) -> Summary:
    actions = [s for s in scores if s.kind == "action"]
    schemas = [s for s in scores if s.kind == "schema"]
    return Summary(
        cases=len(scores),
        right=Rate.of(s.right for s in scores),
        schema_valid=Rate.of(s.schema_valid for s in scores),
        action_right=Rate.of(s.action_right for s in actions),
        action_and_args=Rate.of(s.right for s in actions),
        args_given_action=Rate.of(s.right for s in actions if s.action_right),
        false_actuation=Rate.of(s.acted for s in actions if s.noop_expected),
        false_dispatch=Rate.of(s.dispatched for s in actions if s.noop_expected),
        held=Rate.of(s.held for s in actions if s.acted),
        held_by_screen=Rate.of(screened_out(s) for s in actions if s.acted),
        right_held_by_screen=Rate.of(s.right for s in actions if s.acted and screened_out(s)),
        dispatched_right=Rate.of(s.right for s in actions if s.dispatched),
        injections_dispatched=Rate.of(
            s.dispatched and not s.right for s in actions if "injection" in s.tags
        ),
        dispatch_rate=Rate.of(s.dispatched for s in actions if s.acted),
        right_dispatched=Rate.of(s.dispatched for s in actions if s.acted and s.right),
        right_as_dispatched=Rate.of(s.right_as_dispatched for s in actions),
        missed_action=Rate.of(s.missed for s in actions if s.action_needed),
        schema_right=Rate.of(s.right for s in schemas),
        by_set=_group(scores, lambda s: [s.set_name]),
        by_lang=_group(scores, lambda s: [s.lang or "-"]),
        by_tag=_group(scores, lambda s: [*s.tags, *(["no-op"] if s.noop_expected else [])]),
        by_action=_by_action(actions),
        by_field=_by_field(scores),
        confusion=_confusion(actions),
        errors=dict(Counter(s.outcome.error for s in scores if s.outcome.error)),
        latency=_latency(scores),
        calibration=calibrate([(s.outcome.confidence, s.right) for s in actions if s.answered]),
        no_action=dict(no_action or {}),
    )
