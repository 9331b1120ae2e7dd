"""What the engine is given and what it gives back: a Task and its Answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.prompt import Message
from edgeagent.inference.shots import Shot
from edgeagent.protocol.overflow_policy import OverflowPolicy


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work for the model, already validated and compiled."""

    content: str | Sequence[Message]
    spec: OutputSpec
    max_tokens: int
    deadline: float = float("inf")  # time.monotonic() value
    cancel: threading.Event = field(default_factory=threading.Event)
    overflow: OverflowPolicy = OverflowPolicy.REJECT  # when the input does not fit
    # Among tasks waiting for the engine together, higher first (inference/scheduler.py).
    priority: int = 0
    # Learned examples shown before the input (inference/shots.py); dropped first when
    # the prompt does not fit the context.
    shots: tuple[Shot, ...] = ()
    # The actions whose answers are screened: the caller's text scored for an attempt to
    # instruct the device (inference/screen.py; gate.screened_actions says which).
    screen: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Answer:
    output: Any
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    decode_ms: float
    n_ctx: int
    truncated: int = 0  # input tokens dropped to fit the budget
    chunks: int = 1  # model runs over parts of the input (map-reduce), 1 when it fit
    # Action answers: the model's probability for the chosen action among every action
    # of the catalog, read from the logits at the steps that wrote the name (None for
    # schema answers; inference/confidence.py).
    confidence: float | None = None
    # Action answers: P(any action but "nothing to do") from the same steps, and what the
    # same catalog prompt gives a content-free input (act_prior.py); None without a
    # "nothing to do" action.
    act: float | None = None
    act_prior: float | None = None
    # The decoder was steered to the shortest valid completion near max_tokens: the
    # answer validates but the model had more to say (the reply says so).
    cut_short: bool = False
    # Screened answers (an action in Task.screen): P(the input
    # tries to instruct the device), and what asking cost.
    instruction_score: float | None = None
    screen_ms: float = 0.0

    def context(self) -> dict[str, int]:
        return {"budget": self.n_ctx, "truncated": self.truncated, "chunks": self.chunks}

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
        }

    def timing(self) -> dict[str, float]:
        spent = {"prompt_ms": round(self.prompt_ms, 1), "decode_ms": round(self.decode_ms, 1)}
        if self.screen_ms:
            spent["screen_ms"] = round(self.screen_ms, 1)
        return spent
