"""Speculative decoding from the prompt (prompt lookup): no draft model.

Extraction answers copy spans of their input — names, ids, messages, log text. When the
last few tokens written also occur in the prompt (or earlier in the answer), the
tokens that followed them there are a good guess for what comes next. The guess (the
*draft*) is fed together with the token just chosen, in one batch with logits for
every position: on a memory-bandwidth-bound CPU, checking k tokens costs about one pass.

`SpeculativeDecoder` wraps the model the token loop (`decoding.generate_constrained`)
talks to and changes nothing in it: the loop still chooses every token itself — forced
tokens, the argmax check, the mask, the repetition guard — from the logits it is given.
When its choice is the next draft token, that token's KV and the logits after it are
already there and no model pass is needed; at the first difference the rest of the
draft is removed from the KV cache and the loop's token is fed as usual. So the answer
is the one greedy decoding gives, token for token, as long as llama.cpp's logits for a
position do not depend on how many tokens shared its batch (they can differ in the last
bits; see docs/benchmarks.md).

Drafts are cut to what the grammar accepts (`LLMatcher.validate_tokens`), so a guess
the grammar refuses costs nothing. When nothing matches, a step costs one dictionary
lookup; a failed guess costs a wider batch, so the draft length adapts to how well
guesses have been doing in this answer.

Whether a wider batch is cheap depends on the machine (`DraftCosts`, learnt over every
answer of a model): where arithmetic, not memory traffic, is the limit (a busy x86, see
docs/benchmarks.md) a batch of n tokens costs about n steps and no draft can pay; drafts
are then only proposed now and then, to measure again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher

Logits = npt.NDArray[np.float32]

MIN_NGRAM = 2  # a one-token match ('"', ',') guesses too often and too badly
MAX_NGRAM = 4
MAX_DRAFT = 8
START_DRAFT = 4


class DraftTarget(Protocol):
    """A model that can verify drafts (ResidentModel, or a sequence of the batch)."""

    n_vocab: int
    digit_tokens: npt.NDArray[np.bool_]
    draft_costs: DraftCosts  # what verification costs here, shared by the model's answers

    def prefill(self, prompt: Sequence[int]) -> int: ...
    def feed(self, tokens: Sequence[int]) -> None: ...
    def feed_all(self, tokens: Sequence[int]) -> list[Logits]: ...
    def rewind(self, count: int) -> None: ...
    def logits(self) -> Logits: ...
    def is_end_token(self, token: int) -> bool: ...
    def piece(self, token: int) -> str: ...


class NgramLookup:
    """Where each n-gram of a token history last ended; proposes what followed it."""

    def __init__(self, min_n: int = MIN_NGRAM, max_n: int = MAX_NGRAM) -> None:
        self.min_n = min_n
        self.max_n = max_n
        self.history: list[int] = []
        self._ends: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in _ends

    def reset(self, tokens: Sequence[int]) -> None:
        self.history = list(tokens)
        self._ends.clear()
        self._indexed = 0

    def extend(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the
        longest suffix of the history (MAX_NGRAM..MIN_NGRAM tokens)."""
        history = self.history
        last = len(history) - 1
        # Index every position but the last: the suffix must match somewhere earlier.
        for end in range(self._indexed, last):
            for n in range(self.min_n, self.max_n + 1):
                if end + 1 >= n:
                    self._ends[tuple(history[end + 1 - n : end + 1])] = end
        self._indexed = max(self._indexed, last)
        if limit <= 0:
            return []
        for n in range(self.max_n, self.min_n - 1, -1):
            if last + 1 < n:
                continue
            found = self._ends.get(tuple(history[last + 1 - n :]))
            if found is not None:
                return history[found + 1 : found + 1 + limit]
        return []


WARM_UP = 4  # verifications measured before the costs decide anything
MEASURE_EVERY = 16  # while drafts do not pay: one draft in this many is tried anyway
_EMA = 0.2


def _ema(old: float | None, new: float) -> float:
    return new if old is None else old + _EMA * (new - old)


@dataclass(slots=True)
class DraftCosts:
    """What verification costs on this machine, learnt over the answers of one model.

    A verification batch of n tokens costs about 1 + row_cost * (n - 1) single steps:
    near 1 where reading the weights is the limit (a Pi), about n or more where
    arithmetic is (the output layer is computed for every row). An accepted draft token
    saves a step and costs a row, so drafting pays while the share of draft tokens
    accepted (`accepted`) is above row_cost.
    """

    step_ms: float | None = None  # a single-token step
    row_cost: float | None = None  # a verification row beyond the first, in steps
    accepted: float | None = None  # share of draft tokens the loop took
    verifications: int = 0
    skipped: int = 0

    def worth_drafting(self) -> bool:
        if (
            self.verifications < WARM_UP
            or self.row_cost is None
            or self.accepted is None
            or self.row_cost < self.accepted
        ):
            return True
        self.skipped += 1
        return self.skipped % MEASURE_EVERY == 0

    def stepped(self, ms: float) -> None:
        self.step_ms = _ema(self.step_ms, ms)

    def verified(self, ms: float, rows: int) -> None:
        if self.step_ms is not None and self.step_ms > 0 and rows > 1:
            self.verifications += 1
            extra = max(0.0, (ms / self.step_ms - 1) / (rows - 1))
            self.row_cost = _ema(self.row_cost, extra)

    def resolved(self, used: int, drafted: int) -> None:
        self.accepted = _ema(self.accepted, used / drafted)


@dataclass(slots=True)
class SpeculationStats:
    drafts: int = 0  # verification batches
    drafted: int = 0  # tokens proposed (after the grammar's cut)
    accepted: int = 0  # of those, taken by the loop


class SpeculativeDecoder:
    """A Decoder that verifies prompt-lookup drafts in the batch of the chosen token."""

    def __init__(
        self,
        target: DraftTarget,
        matcher: LLMatcher,
        *,
        max_tokens: int,
        max_draft: int = MAX_DRAFT,
        propose_if: Callable[[], bool] | None = None,
    ) -> None:
        """max_draft: longest draft; with the token it rides with, a verification batch
        holds max_draft + 1 tokens (ResidentModel.invariant_rows - 1 keeps it exact).
        propose_if: drafts only while it says so (a sequence of a full batch does not
        gain from wider steps)."""
        self._target = target
        self._propose_if = propose_if
        self._matcher = matcher
        self._max_tokens = max_tokens
        self.n_vocab = target.n_vocab
        self.digit_tokens = target.digit_tokens
        self.lookup = NgramLookup()
        self.stats = SpeculationStats()
        self.costs = target.draft_costs
        self._prompt_len = 0
        self._max_draft = max(0, max_draft)
        self._width = min(START_DRAFT, self._max_draft)
        self._draft: list[int] = []
        self._rows: list[Logits] = []  # logits after the fed token, then after each draft token
        self._used = 0  # draft tokens the loop has taken so far

    def prefill(self, prompt: Sequence[int]) -> int:
        self.lookup.reset(prompt)
        self._prompt_len = len(prompt)
        self._draft, self._rows, self._used = [], [], 0
        return self._target.prefill(prompt)

    def logits(self) -> Logits:
        if self._draft:
            return self._rows[self._used]
        return self._target.logits()

    def feed(self, tokens: Sequence[int]) -> None:
        if self._draft:
            tokens = self._take_from_draft(tokens)
            if not tokens:
                return
        self.lookup.extend(tokens)
        draft = self._propose()
        if not draft:
            started = time.perf_counter()
            self._target.feed(tokens)
            if len(tokens) == 1:
                self.costs.stepped((time.perf_counter() - started) * 1000)
            return
        started = time.perf_counter()
        rows = self._target.feed_all([*tokens, *draft])
        self.costs.verified((time.perf_counter() - started) * 1000, len(tokens) + len(draft))
        self._rows = rows[len(tokens) - 1 :]
        self._draft, self._used = draft, 0
        self.stats.drafts += 1
        self.stats.drafted += len(draft)

    def _take_from_draft(self, tokens: Sequence[int]) -> Sequence[int]:
        """Consume the tokens that match the draft; returns those still to be fed."""
        rest = self._draft[self._used :]
        matched = 0
        while matched < min(len(tokens), len(rest)) and tokens[matched] == rest[matched]:
            matched += 1
        self._used += matched
        self.stats.accepted += matched
        self.lookup.extend(tokens[:matched])
        if self._used == len(self._draft) or matched < min(len(tokens), len(rest)):
            self.costs.resolved(self._used, len(self._draft))
        if self._used == len(self._draft):
            # All taken: the model's current logits are those after the last draft token.
            self._width = min(self._max_draft, self._width + 2)
            self._draft, self._rows = [], []
            return tokens[matched:]
        if matched == len(tokens):
            return []
        # The loop chose otherwise: forget the draft tokens it did not take.
        self._target.rewind(len(self._draft) - self._used)
        self._width = min(self._max_draft, max(1, self._used or self._width // 2))
        self._draft, self._rows = [], []
        return tokens[matched:]

    def _propose(self) -> list[int]:
        if self._propose_if is not None and not self._propose_if():
            return []
        written = len(self.lookup.history) - self._prompt_len
        room = self._max_tokens - written
        draft = self.lookup.propose(min(self._width, room))
        if draft:
            # validate_tokens: how many of them the grammar accepts from here, in order.
            draft = draft[: self._matcher.validate_tokens(draft)]
        if draft and not self.costs.worth_drafting():
            return []
        return draft

    def is_end_token(self, token: int) -> bool:
        return self._target.is_end_token(token)

    def piece(self, token: int) -> str:
        return self._target.piece(token)
