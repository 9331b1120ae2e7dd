"""Several tasks decoded together: one llama_decode per step for all their sequences.

Each task's token loop (`decoding.generate_constrained`, with its own llguidance
matcher, forced tokens, repetition guard and stop) runs unchanged in a thread of its
own, against a `SeqHandle`: a model whose every call (prefill, feed, rewind) becomes a
request to the `Batcher`. The batcher runs on the engine's inference thread — the only
thread that touches llama.cpp — and serves the requests of all open sequences:

* **batch mode** (at least `min_batch` open sequences): the context is recreated with one
  KV stream per sequence (`ResidentModel.use_streams`; a running sequence's KV moves
  along) and the tokens every sequence wants fed go into one decode. On a CPU a step
  of n sequences costs less than n steps (the weights are read once), but too few
  sequences do not pay: on the 2-core x86 test machine two sequences in lockstep gave
  0.85x the tokens/s of one.
* **serial mode** (fewer): one sequence at a time, the highest priority first (then the
  oldest), to its end — a task alone runs in a one-sequence context as it always did.

Identical answers: every sequence has its own stream, from cell 0, as a task alone has;
its prompt is evaluated on its own, in the same batches; and a decode holds at most
`ResidentModel.invariant_rows` tokens (7 for Qwen2.5-0.5B), the batch size up to which
llama.cpp's kernels give each token the logits it gets alone (inference/invariance.py).
More tokens than that are split over several decodes. So a batched answer is the
answer the task gets alone, token for token (tests/integration/test_batch.py).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.kvcache import KvContext, Logits
from edgeagent.inference.prefix_cache import PrefixCache, fixed_length
from edgeagent.inference.prefix_cache import prefill as prefill_prompt

MIN_BATCH = 4
_WAIT_S = 0.05  # how long the batcher waits for a slow sequence before it goes on


class SlotModel(Protocol):
    """What the batcher needs from the model (ResidentModel)."""

    n_vocab: int
    digit_tokens: npt.NDArray[np.bool_]
    prefix_cache: PrefixCache
    invariant_rows: int  # tokens per decode whose logits equal single steps
    max_seq: int
    n_seq: int

    def use_streams(self, n_seq: int, moves: Mapping[int, int]) -> None: ...
    @property
    def kv(self) -> KvContext: ...
    def prefill(self, prompt: Sequence[int]) -> int: ...
    def is_end_token(self, token: int) -> bool: ...
    def piece(self, token: int) -> str: ...


class _Kind(Enum):
    PREFILL = "prefill"
    FEED = "feed"
    REWIND = "rewind"
    CLOSE = "close"


@dataclass(eq=False)
class _Request:
    kind: _Kind
    tokens: Sequence[int] = ()
    all_logits: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass(eq=False)
class _Slot:
    priority: int
    arrival: int
    reserve: int  # answer tokens the sequence may add (max_tokens)
    deadline: float
    cancel: threading.Event | None
    seq: int | None = None
    request: _Request | None = None

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.arrival)


class SeqHandle:
    """One task's sequence as the token loop sees it (a Decoder and a DraftTarget).

    Used from the task's own thread; every model call waits for the batcher.
    """

    def __init__(self, batcher: Batcher, slot: _Slot, model: SlotModel) -> None:
        self._batcher = batcher
        self._slot = slot
        self._model = model
        self.n_vocab = model.n_vocab
        self.digit_tokens = model.digit_tokens
        self._logits: Logits | None = None

    @property
    def batched(self) -> bool:
        """Whether the batcher is in batch mode (speculation then does not pay)."""
        return self._batcher.batch_mode

    def prefill(self, prompt: Sequence[int]) -> int:
        reused, self._logits = self._ask(_Request(_Kind.PREFILL, prompt))
        return int(reused)

    def feed(self, tokens: Sequence[int]) -> None:
        self._logits = self._ask(_Request(_Kind.FEED, tokens))[-1]

    def feed_all(self, tokens: Sequence[int]) -> list[Logits]:
        rows: list[Logits] = self._ask(_Request(_Kind.FEED, tokens, all_logits=True))
        self._logits = rows[-1]
        return rows

    def rewind(self, count: int) -> None:
        self._ask(_Request(_Kind.REWIND, [count]))

    def logits(self) -> Logits:
        if self._logits is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "logits before the prompt was fed")
        return self._logits

    def close(self) -> None:
        self._ask(_Request(_Kind.CLOSE))

    def is_end_token(self, token: int) -> bool:
        return self._model.is_end_token(token)

    def piece(self, token: int) -> str:
        return self._model.piece(token)

    def _ask(self, request: _Request) -> Any:
        self._batcher.submit(self._slot, request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result


class Batcher:
    """Serves the open sequences' requests; `step` runs on the inference thread only."""

    def __init__(
        self,
        model: SlotModel,
        *,
        min_batch: int = MIN_BATCH,
        streams: int | None = None,
    ) -> None:
        self.model = model
        self.min_batch = min_batch
        self.streams = streams or model.max_seq  # sequences of a batch-mode context
        self._cv = threading.Condition()
        self._slots: list[_Slot] = []
        self._order = itertools.count()
        self.batch_mode = False
        self.steps = 0  # decodes served, for the benchmark
        self.batched_steps = 0  # of them, with more than one sequence

    # -- task threads -------------------------------------------------------------

    def open(
        self,
        *,
        reserve: int,
        priority: int = 0,
        deadline: float = float("inf"),
        cancel: threading.Event | None = None,
    ) -> SeqHandle:
        slot = _Slot(priority, next(self._order), reserve, deadline, cancel)
        with self._cv:
            self._slots.append(slot)
            self._cv.notify_all()
        return SeqHandle(self, slot, self.model)

    def submit(self, slot: _Slot, request: _Request) -> None:
        with self._cv:
            slot.request = request
            self._cv.notify_all()

    def wake(self) -> None:
        """Something changed outside the open sequences (a task ended): look again."""
        with self._cv:
            self._cv.notify_all()

    # -- the inference thread -----------------------------------------------------

    def step(self, *, wait_s: float = _WAIT_S) -> None:
        """Serve one round of requests (waits up to wait_s for the open sequences)."""
        with self._cv:
            self._cv.wait_for(lambda: bool(self._slots) and self._all_ready(), wait_s)
            slots = list(self._slots)
        self._expire(slots)
        for slot in slots:
            if _pending(slot) in (_Kind.REWIND, _Kind.CLOSE):
                self._serve_now(slot)
        slots = [s for s in slots if _pending(s) is not _Kind.CLOSE]
        self.batch_mode = len(slots) >= self.min_batch
        if self.batch_mode and self.model.n_seq == 1 and self.streams > 1:
            held = [s for s in slots if s.seq is not None]
            self.model.use_streams(self.streams, {0: 0} if held else {})
        ready = sorted((s for s in slots if _pending(s) is not None), key=lambda s: s.rank)
        prefills = [s for s in ready if _pending(s) is _Kind.PREFILL]
        if self.batch_mode:
            if prefills:
                self._serve_prefill(prefills[0], slots)
            else:
                self._serve_feeds(ready)
            return
        # Serial: the best-ranked sequence already running goes on, else the best one.
        running = sorted((s for s in slots if s.seq is not None), key=lambda s: s.rank)
        chosen = running[0] if running else min(slots, key=lambda s: s.rank, default=None)
        if chosen is not None and chosen in ready:
            if chosen in prefills:
                self._serve_prefill(chosen, slots)
            else:
                self._serve_feeds([chosen])

    def _all_ready(self) -> bool:
        return all(_pending(s) is not None for s in self._slots)

    def _expire(self, slots: list[_Slot]) -> None:
        """Fail the waiting requests of sequences past their deadline or cancelled."""
        now = time.monotonic()
        for slot in slots:
            request = slot.request
            if _pending(slot) in (None, _Kind.CLOSE) or request is None:
                continue
            if slot.cancel is not None and slot.cancel.is_set():
                request.finish(error=TaskHandedBack("task cancelled by shutdown"))
            elif now > slot.deadline:
                error = EdgeAgentError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed while waiting")
                request.finish(error=error)

    def _serve_now(self, slot: _Slot) -> None:
        request = slot.request
        assert request is not None
        if request.kind is _Kind.CLOSE:
            with self._cv:
                self._slots.remove(slot)
        elif slot.seq is not None:
            kv = self.model.kv
            kv.remove(slot.seq, len(kv.tokens[slot.seq]) - int(request.tokens[0]))
        request.finish()

    def _serve_prefill(self, slot: _Slot, slots: list[_Slot]) -> None:
        request = slot.request
        assert request is not None
        prompt = request.tokens
        taken = {s.seq for s in slots if s is not slot and s.seq is not None}
        try:
            if not taken:
                if self.model.n_seq > 1 and not self.batch_mode:
                    self.model.use_streams(1, {})  # alone again: back to one sequence
                # Alone: sequence 0, as a task always ran (ResidentModel.prefill).
                slot.seq = 0
                reused = self.model.prefill(prompt)
            else:
                free = [seq for seq in range(self.model.n_seq) if seq not in taken]
                if not free:
                    return  # waits for a sequence to end
                slot.seq = self._pick(free, prompt)
                reused = prefill_prompt(self.model.kv, slot.seq, prompt, self.model.prefix_cache)
        except BaseException as exc:
            slot.seq = None
            request.finish(error=exc)
            return
        self.steps += 1
        request.finish(result=(reused, np.array(self.model.kv.logits(-1))))

    def _pick(self, free: list[int], prompt: Sequence[int]) -> int:
        """A free sequence, one that already holds the prompt's fixed part first."""
        kv = self.model.kv
        keep = fixed_length(prompt)
        fixed = list(prompt[:keep])
        return next((seq for seq in free if keep and kv.tokens[seq][:keep] == fixed), free[0])

    def _serve_feeds(self, ready: list[_Slot]) -> None:
        """Decodes of at most invariant_rows tokens (and n_batch); a longer feed alone."""
        feeds = [s for s in ready if _pending(s) is _Kind.FEED and s.seq is not None]
        limit = min(self.model.invariant_rows, self.model.kv.n_batch)
        group: list[_Slot] = []
        size = 0
        for slot in feeds:
            tokens = len(slot.request.tokens) if slot.request is not None else 0
            if group and size + tokens > limit:
                self._decode(group)
                group, size = [], 0
            group.append(slot)
            size += tokens
        if group:
            self._decode(group)

    def _decode(self, group: list[_Slot]) -> None:
        kv = self.model.kv
        requests = [s.request for s in group if s.request is not None]
        try:
            if len(group) == 1 and len(requests[0].tokens) > kv.n_batch:
                kv.feed(group[0].seq or 0, requests[0].tokens)
                starts = [-len(requests[0].tokens)]
            else:
                parts = [
                    (s.seq or 0, r.tokens, r.all_logits)
                    for s, r in zip(group, requests, strict=True)
                ]
                starts = kv.decode(parts)
        except BaseException as exc:
            for request in requests:
                request.finish(error=exc)
            return
        self.steps += 1
        self.batched_steps += len(group) > 1
        for start, request in zip(starts, requests, strict=True):
            count = len(request.tokens)
            first = start if request.all_logits else start + count - 1
            rows = [np.array(kv.logits(i)) for i in range(first, start + count)]
            request.finish(result=rows)


def _pending(slot: _Slot) -> _Kind | None:
    """The kind of the slot's request that waits to be served (None: none waits)."""
    request = slot.request
    if request is None or request.done.is_set():
        return None
    return request.kind
