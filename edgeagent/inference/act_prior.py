"""The act-or-not prior of a catalog: P(act) when the input says nothing at all.

A small model's leaning to act or not depends on the catalog's prompt as much as on the
input. The gate's act score is calibrated per catalog (confidence.calibrated_act)
against what the same prompt gives a content-free input: an input the model treats like
no input scores 0.5, one that pushes it to act scores above. The prior is computed once
per catalog prompt, on the inference thread, right before the first task that needs it
(the system message's prefix is then in the KV cache for that task too: the run costs a
short user turn and the few steps up to the action name), and kept for the few catalogs
a device serves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from llguidance import LLMatcher

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.confidence import NamedModel, tracker_for
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.decoding import Decoder, Sampler, StepControl, generate_constrained

CONTENT_FREE = "N/A"  # the content-free input of contextual calibration
PRIORS_KEPT = 16  # catalog prompts remembered (a device serves one or a few)
_NAME_TOKENS = 160  # enough for a `[model] reason` (80 characters) and the name


class ActPriors:
    """Content-free P(act) by catalog prompt, least recently used dropped first."""

    def __init__(self, size: int = PRIORS_KEPT) -> None:
        self._size = size
        self._priors: OrderedDict[tuple[str, str], float | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: OutputSpec, compute: Callable[[], float | None]) -> float | None:
        """The prior of spec's catalog (None for schemas or a catalog without a
        "nothing to do" action); computed by `compute` the first time."""
        if spec.kind != "action" or spec.no_action is None or spec.gate_grammar is None:
            return None
        key = (spec.instructions, spec.gate_grammar)
        with self._lock:  # tasks of the batcher ask from their own threads
            if key in self._priors:
                self._priors.move_to_end(key)
                return self._priors[key]
        prior = compute()  # outside the lock: two first tasks may both compute it
        with self._lock:
            self._priors[key] = prior
            if len(self._priors) > self._size:
                self._priors.popitem(last=False)
        return prior


def content_free_act(
    decoder: Decoder,
    model: NamedModel,
    spec: OutputSpec,
    prompt: Sequence[int],
    control: StepControl,
) -> float | None:
    """P(act) of the catalog's prompt over a content-free input, greedy, the whole
    catalog allowed; None when no name could be written within a few tokens."""
    tracker = tracker_for(spec, model)
    if tracker is None or spec.gate_grammar is None:
        return None
    matcher = LLMatcher(model.lltokenizer, spec.gate_grammar)
    try:
        generation = generate_constrained(
            decoder,
            matcher,
            prompt,
            max_tokens=_NAME_TOKENS,
            sampler=Sampler(),
            control=control,
            confidence=tracker,
            until_named=True,
        )
    except EdgeAgentError as exc:
        if exc.code is not ErrorCode.OUTPUT_INVALID:  # a deadline: about this moment
            raise
        return None
    return generation.act
