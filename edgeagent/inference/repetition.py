"""Breaks the degenerate loops a small model can fall into inside a valid JSON answer.

The grammar guarantees the answer's shape, not that it ends: a 135M-0.5B model can
write "100.000000000000001111..." or a string like "Day 21.1.1.1.1.1..." until
max_tokens runs out. Two cases are cut, both by removing options from the token
mask (never adding any), so the answer still satisfies the schema:

* outside strings, a number with more than MAX_FRACTION fractional or MAX_INTEGER
  integer digits may not take another digit token (only precision nobody asked for
  is lost; the grammar still offers ",", "}", "]" or an exponent);
* inside a string, a cycle of up to MAX_PERIOD tokens repeated MIN_REPEATS times may
  not continue with its next token.

Data outside strings (e.g. an array of zeros) is never touched by the cycle rule.
When the grammar leaves no other choice, nothing is removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

MAX_FRACTION = 8
MAX_INTEGER = 16
# 12, not fewer: SmolLM2 was seen cycling on 7-token phrases (", a 2023 AI") inside a
# 600-character string; 4 rounds of 12 tokens in a row are not something prose does.
MAX_PERIOD = 12
MIN_REPEATS = 4
_RUNAWAY_NUMBER = re.compile(rf"(?:\.\d{{{MAX_FRACTION},}}|(?<![.\d])\d{{{MAX_INTEGER},}})$")


class RepetitionGuard:
    def __init__(self, digit_tokens: npt.NDArray[np.bool_]) -> None:
        self._digits = digit_tokens
        self._tokens: list[int] = []
        self._tail = ""
        self._in_string = False
        self._escaped = False

    def add(self, tokens: Sequence[int], text: str) -> None:
        """Record emitted tokens and their text (tracks whether we are inside a string)."""
        self._tokens.extend(tokens)
        del self._tokens[: -MAX_PERIOD * MIN_REPEATS]
        self._tail = (self._tail + text)[-64:]
        for char in text:
            if self._escaped:
                self._escaped = False
            elif self._in_string and char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = not self._in_string

    def _cycle_continuations(self) -> set[int]:
        out = self._tokens
        found: set[int] = set()
        for period in range(1, MAX_PERIOD + 1):
            span = period * MIN_REPEATS
            if len(out) >= span and all(
                out[-i] == out[-i - period] for i in range(1, span - period + 1)
            ):
                found.add(out[-period])  # the token that would start the next round
        return found

    def banned(self) -> tuple[set[int], bool]:
        """(tokens that would continue a loop, whether digit tokens are banned)."""
        if self._in_string:
            return self._cycle_continuations(), False
        return set(), _RUNAWAY_NUMBER.search(self._tail) is not None

    def refuses(self, token: int) -> bool:
        tokens, digits = self.banned()
        return token in tokens or (digits and bool(self._digits[token]))

    def narrow(self, allowed: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        tokens, digits = self.banned()
        if not tokens and not digits:
            return allowed
        narrowed = allowed & ~self._digits if digits else allowed.copy()
        if tokens:
            narrowed[list(tokens)] = False
        if not narrowed.any():
            return allowed
        return narrowed
