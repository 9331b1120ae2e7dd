"""Constrained decoding: the token loop that can only produce grammar-valid JSON.

Design (measured in docs/benchmarks.md): the expensive part of grammar-constrained
decoding is computing the full token mask (one bit per vocabulary entry, 151,936 for
Qwen) at every step. Most of the time the model's favourite token is already allowed,
so each step first asks llguidance whether the argmax token is acceptable (a cheap
check of one token) and computes the full mask only when it is not. Tokens the
grammar forces (fixed keys, quotes, commas) are fed to the model in one batch
instead of being sampled one at a time.

Two helpers ride along: the confidence of an action answer also needs the whole
catalog's mask at the 1-3 steps that write the action name, and the logits of the
name tokens a narrower grammar forces, then fed one at a time (confidence.py); and
in the last tokens of max_tokens each chosen token is checked to leave a valid
completion that fits, else the shortest one is written instead (finish.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher

from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.confidence import ConfidenceTracker, TokenMask
from edgeagent.inference.finish import Finisher
from edgeagent.inference.repetition import RepetitionGuard


class Decoder(Protocol):
    """What the token loop needs from a model (ResidentModel, or a fake in unit tests)."""

    n_vocab: int
    digit_tokens: npt.NDArray[np.bool_]  # tokens whose text is only ASCII digits

    def prefill(self, prompt: Sequence[int]) -> int: ...
    def feed(self, tokens: Sequence[int]) -> None: ...
    def logits(self) -> npt.NDArray[np.float32]: ...
    def is_end_token(self, token: int) -> bool: ...
    def piece(self, token: int) -> str: ...


@dataclass(frozen=True, slots=True)
class Generation:
    tokens: list[int]
    prompt_tokens: int
    cached_prompt_tokens: int
    forced_tokens: int
    prompt_ms: float
    decode_ms: float
    masked_steps: int = 0  # steps where the model's first choice was refused
    confidence: float | None = None  # action answers: P(chosen name | catalog's names)
    act: float | None = None  # action answers: P(any action but "nothing to do")
    cut_short: bool = False  # steered to the shortest completion near max_tokens

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


@dataclass(slots=True)
class StepControl:
    """Per-task limits checked between decode steps.

    `cancel` is set from outside (shutdown hand-back); `on_step` lets the engine record
    progress for the systemd watchdog.
    """

    deadline: float = float("inf")  # time.monotonic() value
    cancel: threading.Event | None = None
    on_step: Callable[[], None] | None = None

    def check(self) -> None:
        if self.on_step is not None:
            self.on_step()
        if self.cancel is not None and self.cancel.is_set():
            raise TaskHandedBack("task cancelled by shutdown")
        if time.monotonic() > self.deadline:
            raise EdgeAgentError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed during generation")


class Sampler:
    """Greedy (temperature 0) or temperature sampling over the allowed tokens."""

    def __init__(self, temperature: float = 0.0, seed: int = 0) -> None:
        self.temperature = temperature
        self._rng = np.random.default_rng(seed)

    def pick(self, logits: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_] | None) -> int:
        if allowed is not None:
            logits = np.where(allowed, logits, -np.inf).astype(np.float32)
        if self.temperature <= 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        return int(self._rng.choice(len(probs), p=probs))


def _matcher_error(matcher: LLMatcher) -> EdgeAgentError:
    return EdgeAgentError(ErrorCode.INTERNAL, f"grammar matcher failed: {matcher.get_error()}")


def _forced_tokens(matcher: LLMatcher) -> list[int] | None:
    """The tokens the grammar forces next; None when the vocabulary cannot write them.

    llguidance tokenizes the forced bytes with the model's tokenizer, which drops bytes
    no token of the vocabulary holds (SmolLM2 has no token for the UTF-8 lead byte
    0xF1: a property name with a character in U+40000..U+7FFFF came back without it).
    The tokens after such a gap are not what the grammar forces: the matcher refuses
    them, its token mask is no better there (it offers the byte after the gap), and
    consuming them failed as INTERNAL. The prefix the matcher accepts is taken; when
    it accepts none of them, the answer cannot be written with this model.
    """
    forced = matcher.compute_ff_tokens()
    if not forced:
        return forced
    accepted = matcher.validate_tokens(forced)
    return forced[:accepted] if accepted else None


def _unwritable(model: Decoder, out: Sequence[int]) -> EdgeAgentError:
    return EdgeAgentError(
        ErrorCode.OUTPUT_INVALID,
        "the answer needs text no token of this model can write (e.g. a property name "
        "with characters outside its vocabulary)",
        completion_tokens=len(out),
        partial="".join(model.piece(t) for t in out[:80]),
    )


def generate_constrained(  # noqa: C901, PLR0912, PLR0915 - one loop; splitting it hides the step order
    model: Decoder,
    matcher: LLMatcher,
    prompt: Sequence[int],
    *,
    max_tokens: int,
    sampler: Sampler,
    control: StepControl,
    confidence: ConfidenceTracker | None = None,
    finisher: Finisher | None = None,
    until_named: bool = False,
) -> Generation:
    """Generate until the grammar is complete. Raises OUTPUT_INVALID if max_tokens cuts it.

    confidence: weighs the steps that write the action name (confidence.py).
    finisher: near max_tokens, steers to the shortest valid completion (finish.py).
    until_named: stop once the action name is written (a content-free run that only
    wants the name's probabilities, act_prior.py).
    """
    if matcher.is_error():
        raise _matcher_error(matcher)
    started = time.perf_counter()
    control.check()
    cached = model.prefill(prompt)
    prompt_done = time.perf_counter()
    mask = TokenMask(model.n_vocab)
    guard = RepetitionGuard(model.digit_tokens)
    out: list[int] = []
    forced = 0
    masked = 0
    finished = False

    def wrote(tokens: list[int]) -> None:
        text = "".join(model.piece(t) for t in tokens)
        out.extend(tokens)
        guard.add(tokens, text)
        if confidence is not None:
            confidence.add(tokens, text)
        if finisher is not None:
            finisher.add(tokens, text)

    while len(out) < max_tokens:
        control.check()
        if matcher.is_stopped() or (until_named and confidence is not None and confidence.named):
            finished = True
            break
        ff = _forced_tokens(matcher)
        if ff is None:
            raise _unwritable(model, out)
        ff = ff[: max_tokens - len(out)]
        if ff and confidence is not None:
            weighed = ff[0]
            ff = ff[: confidence.unweighed(ff)]
            if not ff:
                # A name token this grammar forces but the whole catalog does not: the
                # gate weighs it with its own logits (confidence.py), so it is fed alone.
                confidence.weigh(model.logits(), None, weighed)
                ff = [weighed]
        if ff:
            # Forced tokens: no choice to make, so no sampling; one batched decode.
            if not matcher.consume_tokens(ff):
                raise _matcher_error(matcher)
            wrote(ff)
            forced += len(ff)
            if matcher.is_stopped():
                finished = True
                break
            model.feed(ff)
            continue
        logits = model.logits()
        # The action name's steps need the mask anyway (its probability mass).
        weigh = confidence is not None and confidence.deciding
        own = confidence is not None and confidence.own_mask  # it masks the whole catalog
        allowed = mask.compute(matcher) if weigh and not own else None
        token = int(np.argmax(logits)) if sampler.temperature <= 0.0 else -1
        if token < 0 or matcher.validate_tokens([token]) != 1 or guard.refuses(token):
            masked += 1
            allowed = mask.compute(matcher) if allowed is None else allowed
            if not allowed.any():
                raise _unwritable(model, out)
            token = sampler.pick(logits, guard.narrow(allowed))
        if confidence is not None and weigh:
            confidence.weigh(logits, allowed, token)
        if model.is_end_token(token):
            # The mask only allows an end token where the grammar may end.
            finished = matcher.is_accepting()
            break
        way_out = finisher.check(matcher, token, len(out)) if finisher is not None else None
        if way_out is not None:
            # No completion would fit after this token: write the shortest one instead.
            if not matcher.consume_tokens(way_out):
                raise _matcher_error(matcher)
            wrote(way_out)
            finished = True
            break
        if not matcher.consume_token(token):
            raise _matcher_error(matcher)
        wrote([token])
        if matcher.is_stopped():
            finished = True
            break
        model.feed([token])
    done = time.perf_counter()
    if not finished and not matcher.is_accepting():
        raise EdgeAgentError(
            ErrorCode.OUTPUT_INVALID,
            f"the answer was not complete after max_tokens={max_tokens} tokens",
            completion_tokens=len(out),
            # The start of what was generated: shows whether the limit is too small or
            # the model went in circles (then a tighter schema or prompt helps).
            partial="".join(model.piece(t) for t in out[:80]),
        )
    return Generation(
        tokens=out,
        prompt_tokens=len(prompt),
        cached_prompt_tokens=cached,
        forced_tokens=forced,
        prompt_ms=(prompt_done - started) * 1000,
        decode_ms=(done - prompt_done) * 1000,
        masked_steps=masked,
        confidence=confidence.value if confidence is not None else None,
        act=confidence.act if confidence is not None else None,
        cut_short=finisher.cut_short if finisher is not None else False,
    )
