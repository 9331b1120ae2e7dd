"""The scripted model's one sequence as the batcher sees it: a `KvContext` of sequence 0.

A scripted model loaded to hold several sequences (`max_seq` > 1) gets a batcher and a
scheduler from the engine, like a real one; while its tasks run one at a time (below
`min_batch`) the batcher serves them on sequence 0 through this view. A batch of
several sequences (`use_streams`) is not scripted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]


class OneSequence(Protocol):
    n_ctx: int
    _kv: list[int]

    def feed(self, tokens: Sequence[int]) -> None: ...
    def feed_all(self, tokens: Sequence[int]) -> list[Logits]: ...
    def rewind(self, count: int) -> None: ...
    def logits(self) -> Logits: ...


class ScriptedKv:
    n_seq = 1

    def __init__(self, model: OneSequence, n_batch: int = 512) -> None:
        self._model = model
        self.n_batch = n_batch
        self._rows: list[Logits] = []

    @property
    def n_ctx(self) -> int:
        return self._model.n_ctx

    @property
    def tokens(self) -> list[list[int]]:
        return [self._model._kv]

    def decode(self, parts: Sequence[tuple[int, Sequence[int], bool]]) -> list[int]:
        ((seq, tokens, all_logits),) = parts  # one sequence: one part
        assert seq == 0
        if all_logits:
            self._rows = self._model.feed_all(tokens)
        else:
            self._model.feed(tokens)
            self._rows = [np.zeros(0, dtype=np.float32)] * (len(tokens) - 1)
            self._rows.append(self._model.logits())
        return [0]

    def feed(self, seq: int, tokens: Sequence[int]) -> None:
        self.decode([(seq, tokens, False)])

    def logits(self, index: int) -> Logits:
        """Row `index` of the last decode; -1: the model's logits now (after a prefill)."""
        return self._model.logits() if index == -1 else self._rows[index]

    def remove(self, seq: int, keep: int = 0) -> None:
        assert seq == 0
        self._model.rewind(len(self._model._kv) - keep)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the scripted KV has one sequence: no {name}")
