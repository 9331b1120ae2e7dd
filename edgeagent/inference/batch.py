"""Several tasks decoded together: one llama_decode per step for all their sequences.

Each task's token loop (`decoding.generate_constrained`, with its own llguidance
matcher, forced tokens, repetition guard and stop) runs unchanged in a thread of its
own, against a `SeqHandle`: a model whose every call (prefill, feed, rewind) becomes a
`ModelCall` to the `Batcher`. The batcher runs on the engine's inference thread — the only
thread that touches llama.cpp — and serves the calls of all open sequences:

* **batch mode** (enough open sequences by batch_rule.py, the rule the service worker
  follows too, where batches pay: `BatchCosts` (batch_costs.py) learns from the decodes
  served whether a batched token costs less than one alone — on a compute-bound CPU it
  does not): the context is recreated with one KV stream per sequence
  (`ResidentModel.use_streams`; a running sequence's KV moves along) and the tokens
  every sequence wants fed go into one decode.
* **serial mode** (fewer): one sequence at a time, the highest priority first (then the
  oldest), to its end — a task alone runs in a one-sequence context as it always did.

The streams of a batch are n_ctx KV tokens each: the scheduler has them given back
(`give_back`) once no task has run for a while, and `[model] parallel` decides whether
the engine batches at all (docs/memory.md).

Identical answers: every sequence has its own stream, from cell 0, as a task alone has;
its prompt is evaluated on its own, in the same batches; and a decode holds at most
`ResidentModel.invariant_rows` tokens (7 for Qwen2.5-0.5B), the batch size up to which
llama.cpp's kernels give each token the logits it gets alone (inference/invariance.py).
More tokens than that are split over several decodes. So a batched answer is the
answer the task gets alone, token for token (tests/integration/test_batch.py).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.batch_costs import BatchCosts
from edgeagent.inference.batch_rule import BatchRule
from edgeagent.inference.kvcache import KvContext
from edgeagent.inference.prefix_cache import PrefixCache, fixed_length
from edgeagent.inference.prefix_cache import prefill as prefill_prompt
from edgeagent.inference.sequence import Kind, ModelCall, SeqHandle, Slot, TokenModel, pending
from edgeagent.inference.task import Task

_WAIT_S = 0.05  # how long the batcher waits for a slow sequence before it goes on


class SlotModel(TokenModel, Protocol):
    """What the batcher needs from the model (ResidentModel), beyond what its sequences'
    handles do."""

    prefix_cache: PrefixCache
    invariant_rows: int  # tokens per decode whose logits equal single steps
    max_seq: int
    n_seq: int

    def use_streams(self, n_seq: int, moves: Mapping[int, int]) -> None: ...
    @property
    def kv(self) -> KvContext: ...
    def prefill(self, prompt: Sequence[int]) -> int: ...


@dataclass(slots=True)
class BatchStats:
    """What the batcher served (the benchmark reads it: cli/bench_throughput.py)."""

    steps: int = 0  # decodes served
    batched_steps: int = 0  # of them, with more than one sequence
    decode_s: float = 0.0  # time in decodes of answer tokens (not prompts)


class Batcher:
    """Serves the open sequences' model calls; `step` runs on the inference thread only."""

    def __init__(
        self,
        model: SlotModel,
        rule: BatchRule | None = None,
        *,
        exact: bool = True,
        costs: BatchCosts | None = None,
    ) -> None:
        """rule: when sequences decode together, and the KV streams of a batch context
        (`rule.parallel`; default: up to the model's `max_seq`). exact: decodes of at
        most model.invariant_rows tokens (batched answers are the answers alone); False:
        as many as fit n_batch. costs: what the load-time probe measured
        (batch_costs.probe_batch_costs), else learnt from the first batches."""
        self.model = model
        self.rule = rule or BatchRule(max_parallel=model.max_seq)
        self.exact = exact
        self._cv = threading.Condition()
        self._slots: list[Slot] = []
        self._order = itertools.count()
        self._poked = False  # wake() while no sequence is open: the step returns at once
        self.costs = costs or BatchCosts()
        self.batch_mode = False
        self.stats = BatchStats()

    # -- task threads -------------------------------------------------------------

    @contextlib.contextmanager
    def sequence(self, task: Task) -> Iterator[SeqHandle]:
        """The task's sequence for its token loop, ranked by its priority, closed after."""
        handle = self.open(priority=task.priority, deadline=task.deadline, cancel=task.cancel)
        try:
            yield handle
        finally:
            handle.close()

    def open(
        self,
        *,
        priority: int = 0,
        deadline: float = float("inf"),
        cancel: threading.Event | None = None,
    ) -> SeqHandle:
        slot = Slot(priority, next(self._order), deadline, cancel)
        with self._cv:
            self._slots.append(slot)
            self._cv.notify_all()
        return SeqHandle(self, slot, self.model)

    def submit(self, slot: Slot, call: ModelCall) -> None:
        with self._cv:
            slot.call = call
            self._cv.notify_all()

    def wake(self) -> None:
        """Something changed outside the open sequences (a task ended, one arrived): a
        step waiting with no sequence open returns, so its caller can start tasks."""
        with self._cv:
            self._poked = True
            self._cv.notify_all()

    # -- the inference thread -----------------------------------------------------

    def give_back(self) -> bool:
        """Back to a context of one sequence when none is open (after a batch): the other
        KV streams (n_ctx tokens each) go back to the system. Sequence 0 keeps its KV,
        so the next task alone reuses its fixed prompt part. True if streams were freed."""
        with self._cv:
            if self._slots or self.model.n_seq == 1:
                return False
        kv = self.model.kv
        self.model.use_streams(1, {0: 0} if kv.tokens[0] else {})
        self.batch_mode = False
        return True

    def step(self, *, wait_s: float = _WAIT_S) -> None:
        """Serve one round of model calls (waits up to wait_s for the open sequences)."""
        with self._cv:
            self._cv.wait_for(self._can_step, wait_s)
            self._poked = False
            slots = list(self._slots)
        self._expire(slots)
        for slot in slots:
            if pending(slot) in (Kind.REWIND, Kind.CLOSE):
                self._serve_now(slot)
        slots = [s for s in slots if pending(s) is not Kind.CLOSE]
        self.batch_mode = self.rule.together(len(slots)) and self.costs.worth_batching()
        streams = self.rule.parallel  # sequences of a batch-mode context
        if self.batch_mode and self.model.n_seq == 1 and streams > 1:
            held = [s for s in slots if s.seq is not None]
            # In exact mode no more sequences than tokens one decode may hold: one token
            # each fits one decode (a ninth would cost a second decode per step).
            streams = min(streams, self._row_limit()) if self.exact else streams
            self.model.use_streams(max(2, streams), {0: 0} if held else {})
        ready = sorted((s for s in slots if pending(s) is not None), key=lambda s: s.rank)
        prefills = [s for s in ready if pending(s) is Kind.PREFILL]
        if self.batch_mode:
            # One prompt per step (the first that has a sequence), else everyone's tokens.
            if not any(self._serve_prefill(slot, slots) for slot in prefills):
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

    def _can_step(self) -> bool:
        if not self._slots:
            return self._poked
        return self._all_ready()

    def _all_ready(self) -> bool:
        return all(pending(s) is not None for s in self._slots)

    def _expire(self, slots: list[Slot]) -> None:
        """Fail the waiting calls of sequences past their deadline or cancelled."""
        now = time.monotonic()
        for slot in slots:
            call = slot.call
            if pending(slot) in (None, Kind.CLOSE) or call is None:
                continue
            if slot.cancel is not None and slot.cancel.is_set():
                call.finish(error=TaskHandedBack("task cancelled by shutdown"))
            elif now > slot.deadline:
                error = EdgeAgentError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed while waiting")
                call.finish(error=error)

    def _serve_now(self, slot: Slot) -> None:
        call = slot.call
        assert call is not None
        if call.kind is Kind.CLOSE:
            with self._cv:
                self._slots.remove(slot)
        elif slot.seq is not None:
            kv = self.model.kv
            kv.remove(slot.seq, len(kv.tokens[slot.seq]) - int(call.tokens[0]))
        call.finish()

    def _serve_prefill(self, slot: Slot, slots: list[Slot]) -> bool:
        """Evaluate the slot's prompt; False when no sequence is free for it yet."""
        call = slot.call
        assert call is not None
        prompt = call.tokens
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
                    return False  # waits for a sequence to end
                slot.seq = self._pick(free, prompt)
                reused = prefill_prompt(self.model.kv, slot.seq, prompt, self.model.prefix_cache)
        except BaseException as exc:
            slot.seq = None
            call.finish(error=exc)
            return True
        self.stats.steps += 1
        call.finish(result=(reused, np.array(self.model.kv.logits(-1))))
        return True

    def _pick(self, free: list[int], prompt: Sequence[int]) -> int:
        """A free sequence, one that already holds the prompt's fixed part first."""
        kv = self.model.kv
        keep = fixed_length(prompt)
        fixed = list(prompt[:keep])
        return next((seq for seq in free if keep and kv.tokens[seq][:keep] == fixed), free[0])

    def _serve_feeds(self, ready: list[Slot]) -> None:
        """Decodes of at most invariant_rows tokens (and n_batch); a longer feed alone."""
        feeds = [s for s in ready if pending(s) is Kind.FEED and s.seq is not None]
        limit = self._row_limit()
        group: list[Slot] = []
        size = 0
        for slot in feeds:
            tokens = len(slot.call.tokens) if slot.call is not None else 0
            if group and size + tokens > limit:
                self._decode(group)
                group, size = [], 0
            group.append(slot)
            size += tokens
        if group:
            self._decode(group)

    def _row_limit(self) -> int:
        n_batch = self.model.kv.n_batch
        return min(self.model.invariant_rows, n_batch) if self.exact else n_batch

    def _decode(self, group: list[Slot]) -> None:
        kv = self.model.kv
        calls = [s.call for s in group if s.call is not None]
        started = time.perf_counter()
        try:
            if len(group) == 1 and len(calls[0].tokens) > kv.n_batch:
                kv.feed(group[0].seq or 0, calls[0].tokens)
                starts = [-len(calls[0].tokens)]
            else:
                parts = [
                    (s.seq or 0, c.tokens, c.all_logits) for s, c in zip(group, calls, strict=True)
                ]
                starts = kv.decode(parts)
        except BaseException as exc:
            for call in calls:
                call.finish(error=exc)
            return
        elapsed = time.perf_counter() - started
        self.stats.decode_s += elapsed
        if all(len(c.tokens) == 1 for c in calls):
            self.costs.decoded(elapsed * 1000, len(calls))
        self.stats.steps += 1
        self.stats.batched_steps += len(group) > 1
        for start, call in zip(starts, calls, strict=True):
            count = len(call.tokens)
            first = start if call.all_logits else start + count - 1
            rows = [np.array(kv.logits(i)) for i in range(first, start + count)]
            call.finish(result=rows)
