"""Confidence of an action answer, weighed against the whole catalog.

Two figures come from the steps that write the action name after `"action":"`:

* `confidence`: the model's probability for the chosen name among every name of the
  catalog, the "nothing to do" action included, whatever subset the request allows.
  A second llguidance matcher runs the whole catalog's action grammar (the contract's
  `gate_grammar`) over the same tokens up to the end of the name; at every name step
  where that grammar leaves a choice, the chosen token's probability is the softmax of
  the logits over the tokens *it* allows. Steps it forces contribute 1. A request that
  narrows the allowed actions makes some name tokens forced in its own grammar; the
  loop then feeds them one at a time (decoding.py) so their logits can be weighed too:
  narrowing what may be answered never narrows what the gate compares against.
* `act`: P(any action but "nothing to do") from the same masks: at each name step the
  mass of the tokens that can only lead to other names, weighted by the probability of
  the path so far. Tokens that leave the answer's path while still shared with the
  "nothing to do" name are not counted, so `act` is a lower bound (exact when the
  names differ from their first token, as they usually do).

Cost per answer: one matcher over the whole catalog (built from the compiled grammar,
fed the answer's tokens up to the end of the name), one token mask and softmax per name
step where the catalog leaves a choice (1-3 steps, as before), and for a restricted
request 1-3 single-token decode steps for the name tokens its own grammar forces.

The name is located by the output text: it starts right after the literal `"action":"`
(which cannot occur inside a JSON string value, where quotes are escaped), so an
optional property written before "action" (a `reason`) does not move it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher, LLTokenizer

from edgeagent.inference.contract import OutputSpec

KEY = '"action":'  # the name's opening quote follows it (compact JSON)


def allowed_probability(
    logits: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_], token: int
) -> float:
    """Softmax probability of `token` among the `allowed` tokens (plain logits)."""
    values = logits[allowed].astype(np.float64)
    return float(1.0 / np.exp(values - float(logits[token])).sum())


class TokenMask:
    """The llguidance bitmask as a reusable buffer, unpacked to booleans on demand."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.bits = np.zeros(((n_vocab + 31) // 32,), dtype=np.int32)

    def compute(self, matcher: LLMatcher) -> npt.NDArray[np.bool_]:
        matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.n_vocab]
        return allowed.astype(np.bool_)


class NamedModel(Protocol):
    """What the tracker needs from a model: its tokenizer, vocabulary and token texts."""

    @property
    def lltokenizer(self) -> LLTokenizer: ...
    @property
    def n_vocab(self) -> int: ...
    def piece(self, token: int) -> str: ...


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the gate weighs against: the whole catalog's action grammar and names."""

    matcher: LLMatcher  # a fresh matcher of the contract's gate_grammar
    names: Sequence[str]
    no_action: str | None
    piece: Callable[[int], str]  # a token's text
    n_vocab: int


def calibrated_act(act: float | None, prior: float | None) -> float | None:
    """P(act) with the catalog's bias taken out: the odds of `act` divided by the odds
    the same catalog gives a content-free input (`prior`), as a probability. An input
    the model treats like no input at all scores 0.5; None when either is unknown."""
    if act is None or prior is None:
        return None
    eps = 1e-6
    act = min(max(act, eps), 1 - eps)
    prior = min(max(prior, eps), 1 - eps)
    odds = (act / (1 - act)) / (prior / (1 - prior))
    return odds / (1 + odds)


class ConfidenceTracker:
    """Fed every token the loop writes; weighs the name steps (see the module doc)."""

    def __init__(self, catalog: Catalog | None = None, key: str = KEY) -> None:
        """catalog: weigh against the whole catalog (None: against the answer's own
        mask, for a contract that is the whole catalog). key: what stands right before
        the name's opening quote."""
        self._catalog = catalog
        self._mask = TokenMask(catalog.n_vocab) if catalog is not None else None
        self._key = key
        self._text = ""
        self._key_end = -1  # index in _text right after the key (-1: not yet)
        self._name_start = -1  # index in _text where the name starts (-1: not yet)
        self._closed = False
        self._broken = False  # the catalog's grammar refused a token: nothing is known
        self._value = 1.0
        self._path = 1.0  # P(the name's tokens so far), for the act mass
        self._act = 0.0
        self._committed = False  # the name written so far fits one name only
        self.steps = 0  # name steps that were weighed

    @property
    def deciding(self) -> bool:
        """Whether the next token can be part of the action name: the key has been
        written (the token may carry the opening quote) and the name is not closed."""
        return not self._closed and self._key_end >= 0

    @property
    def own_mask(self) -> bool:
        """Whether it computes its own (whole-catalog) mask at the name steps."""
        return self._catalog is not None

    def unweighed(self, forced: Sequence[int]) -> int:
        """How many of the answer grammar's forced tokens can be fed without weighing:
        up to the first one that is a name step where the catalog leaves a choice (0:
        that token comes first; the loop weighs it with its logits, decoding.py)."""
        catalog = self._catalog
        if catalog is None or self._closed or self._broken:
            return len(forced)
        # Tokens both grammars force from here contribute 1: fed as they come.
        ahead = catalog.matcher.compute_ff_tokens()
        common = 0
        while common < min(len(forced), len(ahead)) and forced[common] == ahead[common]:
            common += 1
        text = self._text + "".join(catalog.piece(t) for t in forced[:common])
        for index in range(common, len(forced)):
            if self._key in text:
                return index  # a name token the catalog leaves open: weighed first
            text += catalog.piece(forced[index])
        return len(forced)

    def weigh(
        self,
        logits: npt.NDArray[np.float32],
        allowed: npt.NDArray[np.bool_] | None,
        token: int,
    ) -> None:
        """A name token (chosen, or forced by a narrower grammar): multiply its
        probability in. `allowed`: the answer's mask (used without a catalog)."""
        if self._broken:
            return
        if self._catalog is not None and self._mask is not None:
            allowed = self._mask.compute(self._catalog.matcher)
            if not allowed[token]:
                self._broken = True
                return
        if allowed is None:
            raise ValueError("weigh needs a mask without a catalog")
        probability = allowed_probability(logits, allowed, token)
        if self._catalog is not None and self._catalog.no_action is not None:
            self._weigh_act(logits, allowed, token, probability)
        self._value *= probability
        self.steps += 1

    def _weigh_act(
        self,
        logits: npt.NDArray[np.float32],
        allowed: npt.NDArray[np.bool_],
        token: int,
        probability: float,
    ) -> None:
        """Add the mass of this step's tokens that lead to other names than "nothing to
        do" only, weighted by the path so far."""
        catalog = self._catalog
        if self._committed or catalog is None:
            return
        written = self._text[self._key_end :]
        quoted = [f'"{name}"' for name in catalog.names]
        no_action = f'"{catalog.no_action}"'
        ids = np.flatnonzero(allowed)
        values = logits[ids].astype(np.float64)
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        act = 0.0
        for index, candidate_id in enumerate(ids):
            text = written + catalog.piece(int(candidate_id))
            fits = [q for q in quoted if q.startswith(text) or text.startswith(q)]
            if fits and no_action not in fits:
                act += float(probs[index])
            if int(candidate_id) == token and len(fits) == 1:
                self._committed = True
        self._act += self._path * act
        self._path *= probability

    def add(self, tokens: Sequence[int], text: str) -> None:
        """Tokens the loop wrote (forced or chosen) and their text, in order."""
        if self._closed:
            return
        catalog = self._catalog
        if (
            catalog is not None
            and not self._broken
            and not catalog.matcher.consume_tokens(list(tokens))
        ):
            self._broken = True
        self._text += text
        if self._key_end < 0:
            found = self._text.find(self._key)
            if found < 0:
                return
            self._key_end = found + len(self._key)
        if self._name_start < 0:
            if len(self._text) <= self._key_end:
                return
            self._name_start = self._key_end + 1
        self._closed = '"' in self._text[self._name_start :]

    @property
    def value(self) -> float | None:
        """The confidence, or None while no action name was written (or the catalog's
        grammar could not follow the answer: then nothing vouches for it)."""
        return self._value if self._name_start >= 0 and not self._broken else None

    @property
    def act(self) -> float | None:
        """P(any action but "nothing to do"), a lower bound; None without a catalog that
        has a "nothing to do" action, or before the name."""
        catalog = self._catalog
        if catalog is None or catalog.no_action is None or self.value is None:
            return None
        return min(self._act, 1.0)

    @property
    def named(self) -> bool:
        """Whether the action name is complete (a content-free run stops there)."""
        return self._closed


def tracker_for(spec: OutputSpec, model: NamedModel) -> ConfidenceTracker | None:
    """The tracker of an answer to `spec`: against its whole catalog for an action
    contract, None for a schema."""
    if spec.kind != "action" or spec.gate_grammar is None:
        return None
    catalog = Catalog(
        LLMatcher(model.lltokenizer, spec.gate_grammar),
        spec.catalog_actions,
        spec.no_action,
        model.piece,
        model.n_vocab,
    )
    return ConfidenceTracker(catalog)
