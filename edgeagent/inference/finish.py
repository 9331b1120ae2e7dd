"""Answers that always finish: near max_tokens, steer to the shortest valid completion.

A small model can keep adding items or characters to a valid answer until max_tokens
cuts it (OUTPUT_INVALID). In the last WINDOW tokens, every token the model chooses is
checked before it is taken: from the grammar state after it, is there a completion
that fits in the tokens left? `Completer.shortest` looks for one on a copy of the
llguidance matcher (`deep_copy`), greedily: forced tokens, else the token that closes
the most (the open string, then arrays and objects: `"]}` before `"`), else the
shortest value or separator the grammar allows (a required key still missing is then
forced by the grammar), else a filler character (a string's minLength), else the
lowest token the mask allows (the rest of a UTF-8 character, a pattern).

When the model's token leaves no completion in the budget, the loop writes the
completion found from the state before it instead (`Finisher.check`): the answer
validates and is marked cut short. Answers that end on their own never meet that case
and are unchanged token for token. What cannot be completed in max_tokens even so
stays OUTPUT_INVALID.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from llguidance import LLMatcher, LLTokenizer

WINDOW = 64  # the last tokens of max_tokens in which chosen tokens are checked
_MAX_CLOSERS = 4  # longest run of "]}" tried as one token

# Outside strings when nothing closes: a separator (after a value that may end: "," not
# another digit, when a required key is still missing), complete values, value starts.
# Inside strings when the quote is refused: plain characters.
_VALUES = (",", '""', "0", "[]", "{}", '"', "[", "{", "null", "false", "true", "-", ":")
_FILLERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ _-.")


class JsonStringState:
    """Whether the text written so far ends inside a JSON string."""

    def __init__(self, in_string: bool = False, escaped: bool = False) -> None:
        self.in_string = in_string
        self.escaped = escaped

    def copy(self) -> JsonStringState:
        return JsonStringState(self.in_string, self.escaped)

    def add(self, text: str) -> None:
        for char in text:
            if self.escaped:
                self.escaped = False
            elif char == '"':
                self.in_string = not self.in_string
            elif char == "\\" and self.in_string:
                self.escaped = True


def _single_tokens(tokenizer: LLTokenizer, texts: Sequence[str]) -> list[int]:
    """The tokens of those texts that are one token, in the given order."""
    found: list[int] = []
    for text in texts:
        tokens = tokenizer.tokenize_str(text)
        if len(tokens) == 1 and tokens[0] not in found:
            found.append(tokens[0])
    return found


def _closer_runs(prefix: str) -> list[str]:
    runs = [
        prefix + "".join(chars)
        for n in range(_MAX_CLOSERS, -1, -1)
        for chars in itertools.product("]}", repeat=n)
    ]
    return [r for r in runs if r]


class Completer:
    """Finds a short completion of a grammar state (greedy, bounded); one per vocabulary."""

    def __init__(self, tokenizer: LLTokenizer, piece: Callable[[int], str]) -> None:
        self.piece = piece
        self._tokenizer = tokenizer
        # Longest closing run first: '"]}' closes a string, an array and an object at once.
        self._string_closers = _single_tokens(tokenizer, _closer_runs('"'))
        self._closers = _single_tokens(tokenizer, _closer_runs(""))
        self._values = _single_tokens(tokenizer, _VALUES)
        self._fillers = _single_tokens(tokenizer, _FILLERS)

    def _pick(self, matcher: LLMatcher, state: JsonStringState) -> int | None:
        groups: tuple[list[int], ...] = (self._closers, self._values, self._fillers)
        if state.in_string:
            groups = (self._string_closers, self._fillers)
        for group in groups:
            for token in group:
                if matcher.validate_tokens([token]) == 1:
                    return token
        # Anything the grammar allows (the rest of a UTF-8 character a token began, a
        # pattern): the lowest id, a single byte in byte-level vocabularies.
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.flatnonzero(np.unpackbits(bits, bitorder="little")).tolist()
        return next((t for t in allowed if not self._tokenizer.is_special_token(t)), None)

    def shortest(self, matcher: LLMatcher, state: JsonStringState, limit: int) -> list[int] | None:
        """Tokens (at most `limit`) that bring the matcher to an accepting state, found on
        a copy; None if the greedy search finds none within the limit."""
        matcher = matcher.deep_copy()
        state = state.copy()
        out: list[int] = []
        while not (matcher.is_stopped() or matcher.is_accepting()):
            tokens = matcher.compute_ff_tokens()
            tokens = tokens[: matcher.validate_tokens(tokens)] if tokens else tokens
            if not tokens:
                token = self._pick(matcher, state)
                if token is None:
                    return None
                tokens = [token]
            out.extend(tokens)
            if len(out) > limit or not matcher.consume_tokens(tokens):
                return None
            state.add("".join(self.piece(t) for t in tokens))
        return out


class Finisher:
    """The loop's side of it: checks chosen tokens near max_tokens, keeps a way out."""

    def __init__(self, completer: Completer, max_tokens: int, window: int = WINDOW) -> None:
        self._completer = completer
        self._max_tokens = max_tokens
        self._window = window
        self._state = JsonStringState()
        self._way_out: list[int] | None = None  # a completion from the current state
        self.cut_short = False

    def add(self, tokens: Sequence[int], text: str) -> None:
        """Tokens the loop wrote (forced or chosen), in order."""
        self._state.add(text)
        way_out = self._way_out
        n = len(tokens)
        self._way_out = way_out[n:] if way_out is not None and way_out[:n] == tokens else None

    def check(self, matcher: LLMatcher, token: int, written: int) -> list[int] | None:
        """The model chose `token` (not an end token) after `written` tokens. None: take
        it; otherwise the completion to write instead (the answer is then cut short)."""
        left = self._max_tokens - written
        if left > self._window:
            return None
        after = matcher.deep_copy()
        state = self._state.copy()
        if after.consume_token(token):
            state.add(self._completer.piece(token))
            way_out = self._completer.shortest(after, state, left - 1)
            if way_out is not None:
                self._way_out = [token, *way_out]
                return None
        if self._way_out is None:
            self._way_out = self._completer.shortest(matcher, self._state, left)
        if self._way_out is None:
            return None  # no completion fits: the model may still end; else OUTPUT_INVALID
        self.cut_short = True
        return self._way_out
