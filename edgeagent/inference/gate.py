"""The gate's verdict on an action answer: the one place that decides whether it is held.

The daemon (service/pipeline/dispatch.py) and the eval (evaluation/runner.py) both ask it, so
the eval measures the gate the device runs. What it weighs:

* `confidence`: the model's probability for the chosen name among the whole catalog's
  names (inference/confidence.py), against the action's `min_confidence`;
* `act_confidence`: the calibrated probability of acting at all, P(any action but
  "nothing to do") against the same catalog prompt's content-free prior
  (confidence.calibrated_act, act_prior.py), against `[catalog] min_act_confidence`;
* numbers in the arguments the input does not support (grounding.py): held, or the
  confidence halved, as `[catalog] unsupported_arguments` says;
* the instruction screen's score of the input (screen.py), against `[catalog]
  max_instruction_score`: text that reads as an attempt to instruct the device is held
  whatever the action's confidence;
* an answer cut short at max_tokens: always held.

The "nothing to do" action is never held (holding it would hold nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgeagent.config import ActionConfig
from edgeagent.config.catalog import CatalogConfig, effective_min_confidence
from edgeagent.inference.confidence import calibrated_act
from edgeagent.inference.grounding import content_text, unsupported_arguments
from edgeagent.protocol.hold import HoldReason, hold_reason

LOWERED = 0.5  # `unsupported_arguments = "lower"`: the confidence is multiplied by it


@dataclass(frozen=True, slots=True)
class Verdict:
    held: HoldReason | None
    confidence: float | None  # as the reply reports it (lowered when so configured)
    act_confidence: float | None  # calibrated P(act at all)
    min_confidence: float | None
    unsupported: tuple[float, ...] = ()  # the numbers the input does not support
    instruction_score: float | None = None  # the screen's P(the input instructs the device)


def judge(
    settings: CatalogConfig,
    action: ActionConfig,
    args: Any,
    content: Any,
    *,
    confidence: float | None,
    act: float | None,
    act_prior: float | None,
    cut_short: bool,
    instruction_score: float | None = None,
) -> Verdict:
    """The verdict on `action` answered with `args` for the task's `content`."""
    act_confidence = calibrated_act(act, act_prior)
    floor = effective_min_confidence(action, settings)
    if action.nothing_to_do:
        return Verdict(None, confidence, act_confidence, None)
    unsupported = tuple(unsupported_arguments(action, args, content_text(content)))
    policy = settings.unsupported_arguments
    if unsupported and policy == "lower" and confidence is not None:
        confidence *= LOWERED
    why = hold_reason(
        confidence=confidence,
        cut_short=cut_short,
        min_confidence=floor,
        act=act_confidence,
        min_act_confidence=settings.min_act_confidence,
        unsupported=bool(unsupported) and policy == "hold",
        instruction_like=instruction_like(settings, instruction_score),
    )
    return Verdict(why, confidence, act_confidence, floor, unsupported, instruction_score)


def screened_actions(settings: CatalogConfig, actions: Iterable[ActionConfig]) -> frozenset[str]:
    """The actions whose answers the engine screens (Task.screen): those that would be
    published (`dispatch = true`), never the "nothing to do" one; none with
    `screen_instructions = false`. An answer that publishes nothing needs no screen."""
    if not settings.screen_instructions:
        return frozenset()
    return frozenset(a.name for a in actions if a.dispatch and not a.nothing_to_do)


def instruction_like(settings: CatalogConfig, score: float | None) -> bool:
    """Whether the screen's score holds the action (None: the screen did not run, as
    with `screen_instructions = false`; the engine screens every answer naming an action
    of Task.screen, runner.py)."""
    return score is not None and score >= settings.max_instruction_score
