"""Runs eval cases through an answerer: the daemon's Engine, a baseline, or a fake.

Each case becomes the `Task` the daemon would build for the same request: the same
contract (`action_spec` over the allowed actions, or `schema_spec`), the same prompt
and decoding. The answerer is passed in, so this loop is tested without a model.
Every output is validated again here against the case's contract, independently of
the answerer (a baseline may return answers that do not validate).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from edgeagent.errors import EdgeAgentError
from edgeagent.evaluation.cases import Case
from edgeagent.evaluation.suite import EvalSet
from edgeagent.inference.contract import OutputSpec, action_spec, schema_spec, select_actions
from edgeagent.inference.gate import judge, screened_actions
from edgeagent.inference.shots import Shot
from edgeagent.inference.task import Task


class AnswerLike(Protocol):
    """What the runner reads from an answer (edgeagent's `Answer` has all of it)."""

    @property
    def output(self) -> Any: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def cached_prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


class Answerer(Protocol):
    def answer_blocking(self, task: Task) -> AnswerLike: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one system did with one case (before scoring)."""

    output: Any  # the parsed answer; None when there was none
    error: str | None = None  # error code when no valid answer came back
    error_message: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    # The answerer's probability for its choice, once answers carry one.
    confidence: float | None = None
    # The decoder steered the answer to its shortest valid end near max_tokens.
    cut_short: bool = False
    # Why the daemon would hold this action answer (not dispatch it), if it would
    # (inference/gate.py: protocol.hold.HoldReason).
    held: str | None = None
    # P(any action but "nothing to do") over the whole catalog, its content-free prior
    # and the calibrated act score the gate compares with min_act_confidence.
    act: float | None = None
    act_prior: float | None = None
    act_confidence: float | None = None
    unsupported: bool = False  # the arguments hold a number the input does not support
    # The instruction screen's P(the input tries to instruct the device), for answers
    # that act (inference/screen.py); None when it did not run.
    instruction_score: float | None = None
    screen_ms: float = 0.0  # what the screen cost (part of latency_ms)


def confidence_of(answer: object) -> float | None:
    """`answer.confidence` when the answer type has it (a float), else None.

    Read by name so the eval works before and after answers gain the field.
    """
    value = getattr(answer, "confidence", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _number_of(answer: object, name: str) -> float | None:
    value = getattr(answer, name, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def cut_short_of(answer: object) -> bool:
    """`answer.cut_short` when the answer type has it and it is True."""
    return getattr(answer, "cut_short", False) is True


def reason_of(answerer: object) -> bool:
    """`[model] reason` of an answerer that has a model config (`cfg`), like the Engine
    and the baseline: the eval builds the contracts the daemon would, reason included."""
    return getattr(getattr(answerer, "cfg", None), "reason", False) is True


class SpecCache:
    """Compiled contracts by allowed actions / schema text: compiling takes milliseconds
    to tens of milliseconds, and a set reuses the same few contracts for every case."""

    def __init__(self, *, reason: bool = False) -> None:
        self._specs: dict[str, OutputSpec] = {}
        self._reason = reason

    def for_case(self, case: Case, eval_set: EvalSet) -> OutputSpec:
        if case.expect.kind == "schema":
            schema = case.schema_ if case.schema_ is not None else eval_set.schema
            key = "schema:" + json.dumps(schema, sort_keys=True)
            if key not in self._specs:
                self._specs[key] = schema_spec(schema or {})
            return self._specs[key]
        names = case.actions
        key = f"actions:{eval_set.name}:{','.join(names) if names else '*'}"
        if key not in self._specs:
            actions = select_actions(eval_set.catalog, names)
            self._specs[key] = action_spec(actions, reason=self._reason, catalog=eval_set.catalog)
        return self._specs[key]


def run_case(
    answerer: Answerer,
    case: Case,
    spec: OutputSpec,
    *,
    max_tokens: int,
    deadline_s: float,
    shots: tuple[Shot, ...] = (),
    screen: frozenset[str] = frozenset(),
) -> Outcome:
    task = Task(
        content=case.content,
        spec=spec,
        max_tokens=case.max_tokens or max_tokens,
        deadline=time.monotonic() + deadline_s,
        shots=shots,
        screen=screen,
    )
    started = time.perf_counter()
    try:
        answer = answerer.answer_blocking(task)
    except EdgeAgentError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(None, str(exc.code), exc.message, latency_ms=elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    common: dict[str, Any] = {
        "latency_ms": elapsed,
        "prompt_tokens": answer.prompt_tokens,
        "cached_prompt_tokens": answer.cached_prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "confidence": confidence_of(answer),
        "cut_short": cut_short_of(answer),
        "act": _number_of(answer, "act"),
        "act_prior": _number_of(answer, "act_prior"),
        "instruction_score": _number_of(answer, "instruction_score"),
        "screen_ms": _number_of(answer, "screen_ms") or 0.0,
    }
    try:
        spec.validate(answer.output)
    except EdgeAgentError as exc:
        return Outcome(answer.output, str(exc.code), exc.message, **common)
    return Outcome(answer.output, **common)


def with_hold(outcome: Outcome, eval_set: EvalSet, case: Case) -> Outcome:
    """The outcome, with the daemon's gate verdict on its action answer (inference/gate.py:
    the catalog's floors, the answer's confidence, act score and cut_short, and whether
    the case's input supports the arguments' numbers)."""
    output = outcome.output
    if outcome.error is not None or not isinstance(output, dict):
        return outcome
    name = output.get("action")
    action = next((a for a in eval_set.catalog if a.name == name), None)
    if action is None:
        return outcome
    verdict = judge(
        eval_set.settings,
        action,
        output.get("args"),
        case.content,
        confidence=outcome.confidence,
        act=outcome.act,
        act_prior=outcome.act_prior,
        cut_short=outcome.cut_short,
        # What the engine screens (rescoring older answers that were screened more widely).
        instruction_score=outcome.instruction_score
        if name in screened_actions(eval_set.settings, eval_set.catalog)
        else None,
    )
    held = None if verdict.held is None or name == eval_set.no_action else str(verdict.held)
    return dataclasses.replace(
        outcome,
        held=held,
        confidence=verdict.confidence,
        act_confidence=verdict.act_confidence,
        unsupported=bool(verdict.unsupported),
    )


Progress = Callable[[EvalSet, int, Case, Outcome], None]
# The learned examples to show with a case (evaluation/learned.py); none by default.
ShotPicker = Callable[[Case, OutputSpec, EvalSet], tuple[Shot, ...]]


def run_sets(
    answerer: Answerer,
    sets: list[EvalSet],
    *,
    max_tokens: int,
    deadline_s: float = 300.0,
    progress: Progress | None = None,
    shots: ShotPicker | None = None,
) -> Iterator[tuple[EvalSet, Case, Outcome]]:
    """Answer every case of every set, in order, yielding each outcome as it comes."""
    specs = SpecCache(reason=reason_of(answerer))
    for eval_set in sets:
        for index, case in enumerate(eval_set.cases):
            try:
                spec = specs.for_case(case, eval_set)
            except EdgeAgentError as exc:
                # A contract that cannot be compiled is the case's failure, not the run's.
                outcome = Outcome(None, str(exc.code), exc.message)
            else:
                outcome = run_case(
                    answerer,
                    case,
                    spec,
                    max_tokens=max_tokens,
                    deadline_s=deadline_s,
                    shots=shots(case, spec, eval_set) if shots is not None else (),
                    screen=screened_actions(eval_set.settings, eval_set.catalog),
                )
                outcome = with_hold(outcome, eval_set, case)
            if progress is not None:
                progress(eval_set, index, case, outcome)
            yield eval_set, case, outcome
