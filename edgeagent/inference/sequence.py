"""One task's sequence as its token loop sees it: model calls the batcher serves (batch.py).

The token loop runs in the task's own thread and calls a `SeqHandle` as it would call
the model; each call becomes a `ModelCall` the batcher serves on the inference thread,
and the thread waits for it. Logits come back as copies: other sequences' decodes
reuse llama.cpp's buffer before this thread reads them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.kvcache import Logits
from edgeagent.inference.speculative import DraftCosts


class Server(Protocol):
    """The batcher, as a handle sees it."""

    batch_mode: bool

    def submit(self, slot: Slot, call: ModelCall) -> None: ...


class TokenModel(Protocol):
    n_vocab: int
    digit_tokens: npt.NDArray[np.bool_]
    draft_costs: DraftCosts

    def is_end_token(self, token: int) -> bool: ...
    def piece(self, token: int) -> str: ...


class Kind(Enum):
    PREFILL = "prefill"
    FEED = "feed"
    REWIND = "rewind"
    CLOSE = "close"


@dataclass(eq=False)
class ModelCall:
    """One call of a sequence on the model, waiting for the batcher to serve it."""

    kind: Kind
    tokens: Sequence[int] = ()
    all_logits: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass(eq=False)
class Slot:
    priority: int
    arrival: int
    deadline: float
    cancel: threading.Event | None
    seq: int | None = None
    call: ModelCall | None = None  # the sequence's latest call

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.arrival)


class SeqHandle:
    """One task's sequence as the token loop sees it (a Decoder and a DraftTarget).

    Used from the task's own thread; every model call waits for the batcher.
    """

    def __init__(self, batcher: Server, slot: Slot, model: TokenModel) -> None:
        self._batcher = batcher
        self._slot = slot
        self._model = model
        self.n_vocab = model.n_vocab
        self.digit_tokens = model.digit_tokens
        # The model's learnt verification costs, shared by its sequences (speculative.py).
        self.draft_costs = model.draft_costs
        self._logits: Logits | None = None

    @property
    def batched(self) -> bool:
        """Whether the batcher is in batch mode (speculation then does not pay)."""
        return self._batcher.batch_mode

    def prefill(self, prompt: Sequence[int]) -> int:
        reused, self._logits = self._ask(ModelCall(Kind.PREFILL, prompt))
        return int(reused)

    def feed(self, tokens: Sequence[int]) -> None:
        self._logits = self._ask(ModelCall(Kind.FEED, tokens))[-1]

    def feed_all(self, tokens: Sequence[int]) -> list[Logits]:
        rows: list[Logits] = self._ask(ModelCall(Kind.FEED, tokens, all_logits=True))
        self._logits = rows[-1]
        return rows

    def rewind(self, count: int) -> None:
        self._ask(ModelCall(Kind.REWIND, [count]))

    def logits(self) -> Logits:
        if self._logits is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "logits before the prompt was fed")
        return self._logits

    def close(self) -> None:
        self._ask(ModelCall(Kind.CLOSE))

    def is_end_token(self, token: int) -> bool:
        return self._model.is_end_token(token)

    def piece(self, token: int) -> str:
        return self._model.piece(token)

    def _ask(self, call: ModelCall) -> Any:
        self._batcher.submit(self._slot, call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result


def pending(slot: Slot) -> Kind | None:
    """The kind of the slot's call that waits to be served (None: none waits)."""
    call = slot.call
    if call is None or call.done.is_set():
        return None
    return call.kind
