"""Held action answers: why one is held instead of dispatched (`hold_reason`, the rule the
gate applies) and the `held` object of its reply (docs/protocol.md "Held actions").

Apart from reply.py because the rule is a decision of its own, read by the gate
(inference/gate.py) as well as by the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class HoldReason(StrEnum):
    """Why an action answer was held (not dispatched); docs/protocol.md."""

    CONFIDENCE = "confidence"  # below the action's min_confidence
    CONFIDENCE_UNKNOWN = "confidence_unknown"  # a min_confidence is set, no confidence known
    CUT_SHORT = "cut_short"  # the decoder ended the answer at max_tokens
    ACT_CONFIDENCE = "act_confidence"  # acting at all is below [catalog] min_act_confidence
    UNSUPPORTED_ARGUMENT = "unsupported_argument"  # a number the input does not support
    INSTRUCTION_LIKE = "instruction_like"  # the input reads as an attempt to instruct the device


def hold_reason(
    *,
    confidence: float | None,
    cut_short: bool,
    min_confidence: float | None,
    act: float | None = None,
    min_act_confidence: float | None = None,
    unsupported: bool = False,
    instruction_like: bool = False,
) -> HoldReason | None:
    """Whether an action answer is held, and why (None: it goes out as configured).

    An answer the decoder had to end early is never acted on: its arguments may be cut;
    nor one whose arguments hold a number the input does not support (`unsupported`,
    when `[catalog] unsupported_arguments = "hold"`), nor one whose input the instruction
    screen scored at or above `[catalog] max_instruction_score` (`instruction_like`).
    With a `min_confidence`, an answer below it is held, and so is one whose confidence
    is unknown (the operator asked for a floor; nothing says the answer reaches it); the
    same for the act-or-not score (`act`) and `min_act_confidence`.
    """
    if cut_short:
        return HoldReason.CUT_SHORT
    if instruction_like:
        return HoldReason.INSTRUCTION_LIKE
    if unsupported:
        return HoldReason.UNSUPPORTED_ARGUMENT
    for value, floor, below in (
        (confidence, min_confidence, HoldReason.CONFIDENCE),
        (act, min_act_confidence, HoldReason.ACT_CONFIDENCE),
    ):
        if floor is None:
            continue
        if value is None:
            return HoldReason.CONFIDENCE_UNKNOWN
        if value < floor:
            return below
    return None


def rounded_confidence(confidence: float | None) -> float | None:
    """A confidence as replies send it: 4 decimals."""
    return None if confidence is None else round(confidence, 4)


@dataclass(frozen=True, slots=True)
class Hold:
    """An action answer that was not dispatched: why, and what confirming it takes."""

    reason: HoldReason
    confidence: float | None
    min_confidence: float | None
    # Where the action message would have gone (a `dispatch = true` action), so a rule
    # that confirms it can publish `output` there itself; None for reply-only actions.
    topic: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "reason": str(self.reason),
            "confidence": rounded_confidence(self.confidence),
            "min_confidence": self.min_confidence,
        }
        if self.topic is not None:
            body["topic"] = self.topic
        return body
