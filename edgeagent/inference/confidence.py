"""Confidence of an action answer: the model's probability for the chosen action.

The action grammar (contract.action_spec) lets the model write one of the allowed
names after `"action":"`. At every step where the model chooses a token of the name
(names sharing first tokens are followed to the point where they differ, up to the
closing quote), the probability of the chosen token among the tokens the grammar
allows there is the softmax of the logits restricted to the allowed mask. Forced
tokens contribute 1. The product is P(chosen name | allowed names) under the model,
along the tokenization the answer took.

The decision is located by the output text, not by grammar positions: the name starts
right after the literal `"action":"` (which cannot occur inside a JSON string value,
where quotes are escaped), so an optional property written before "action" (a
`reason`) does not move it. Only those 1-3 steps pay for a mask and a softmax.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

KEY = '"action":'  # the name's opening quote follows it (compact JSON)


def allowed_probability(
    logits: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_], token: int
) -> float:
    """Softmax probability of `token` among the `allowed` tokens (plain logits)."""
    values = logits[allowed].astype(np.float64)
    return float(1.0 / np.exp(values - float(logits[token])).sum())


class ConfidenceTracker:
    """Fed every token the loop writes; multiplies the probabilities of the name steps."""

    def __init__(self, key: str = KEY) -> None:
        """key: what stands right before the name's opening quote."""
        self._key = key
        self._text = ""
        self._name_start = -1  # index in _text where the name starts (-1: not yet)
        self._closed = False
        self._value = 1.0
        self.steps = 0  # name steps that were weighed

    @property
    def deciding(self) -> bool:
        """Whether the next chosen token can be part of the action name: the key has
        been written (the token may carry the opening quote) and the name is not closed."""
        return not self._closed and self._key in self._text

    def weigh(
        self, logits: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_], token: int
    ) -> None:
        """A chosen (not forced) token of the name: multiply its probability in."""
        self._value *= allowed_probability(logits, allowed, token)
        self.steps += 1

    def add(self, text: str) -> None:
        """Text the loop wrote (forced or chosen), in order."""
        if self._closed:
            return
        self._text += text
        if self._name_start < 0:
            found = self._text.find(self._key + '"')
            if found < 0:
                return
            self._name_start = found + len(self._key) + 1
        self._closed = '"' in self._text[self._name_start :]

    @property
    def value(self) -> float | None:
        """The confidence, or None while no action name was written."""
        return self._value if self._name_start >= 0 else None
