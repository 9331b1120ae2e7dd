"""Whether decoding several sequences together pays on this machine.

Batching relies on a decode of k sequences (one token each) costing less than k
decodes of one: true where reading the weights from memory is the limit, false where
arithmetic is (a busy 2-vCPU x86: a batched token cost 0.98-1.02 tokens alone,
docs/benchmarks.md). Two measurements answer it:

* `probe_batch_costs`, once when the model loads, in a small context of its own (256
  cells per sequence: 21 MiB for Qwen2.5-0.5B, 46 MiB for SmolLM2, freed at once):
  decides `[model] parallel = "auto"` — whether the engine holds sequences beyond the
  first at all (each is a KV stream of n_ctx tokens, tens to hundreds of MiB);
* `BatchCosts` then keeps learning from the decodes the batcher serves, and serves
  sequences one at a time while a batched token costs as much as one alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from edgeagent.inference.invariance import PROBE_TEXT
from edgeagent.inference.kvcache import KvContext

WARM_UP = 8  # batched decodes measured before the costs decide anything
MEASURE_EVERY = 16  # while batches do not pay: one step in this many is batched anyway
PAYS = 0.95  # a batched token must cost less than this share of a token alone
_EMA = 0.2
PROBE_CONTEXT = 16  # prompt tokens each probe sequence holds before the timed decodes
PROBE_CTX = 256  # KV cells per sequence of the probe context (llama.cpp pads to 256)
PROBE_REPEATS = 3  # alone/batched pairs; the median of each side counts


class BatchCosts:
    """What a token costs in a decode alone and in a decode of several sequences, learnt
    from the decodes served (one token per sequence). Where arithmetic, not reading the
    weights, is the limit a batched token costs as much as one alone, and sequences are
    then served one at a time, batched only now and then to measure again."""

    def __init__(self) -> None:
        self.alone_ms: float | None = None
        self.batched_ms: float | None = None
        self.batches = 0
        self.skipped = 0

    @property
    def pays(self) -> bool:
        """Measured, and a batched token costs less than PAYS of one alone."""
        return (
            self.alone_ms is not None
            and self.batched_ms is not None
            and self.batched_ms < PAYS * self.alone_ms
        )

    def worth_batching(self) -> bool:
        unmeasured = self.alone_ms is None or self.batched_ms is None
        if self.batches < WARM_UP or unmeasured or self.pays:
            return True
        self.skipped += 1
        return self.skipped % MEASURE_EVERY == 0

    def decoded(self, ms: float, sequences: int) -> None:
        per_token = ms / sequences
        if sequences == 1:
            self.alone_ms = _ema(self.alone_ms, per_token)
        else:
            self.batches += 1
            self.batched_ms = _ema(self.batched_ms, per_token)


def _ema(old: float | None, new: float) -> float:
    return new if old is None else old + _EMA * (new - old)


class ProbeContexts(Protocol):
    """What the probe needs from the model: a context of its own (ResidentModel)."""

    def scratch_context(self, n_ctx: int, n_seq: int) -> AbstractContextManager[KvContext]: ...


class SequenceModel(ProbeContexts, Protocol):
    max_seq: int  # sequences it was loaded to hold at most (`[model] parallel`)
    invariant_rows: int  # tokens per decode whose logits equal single steps

    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...


def sequences_that_pay(
    model: SequenceModel, parallel: int | str, *, exact: bool
) -> tuple[int, BatchCosts | None]:
    """Sequences the engine may hold at most, and what the probe measured (None: not
    probed). `[model] parallel` as set, or for "auto" what this board measured when the
    model loaded: every sequence beyond the first is a KV stream of n_ctx tokens, worth
    holding only where a batched token costs less than one alone."""
    if parallel != "auto":
        return min(int(parallel), model.max_seq), None
    # In exact mode a decode holds at most invariant_rows tokens (batch.py).
    rows = min(model.max_seq, model.invariant_rows) if exact else model.max_seq
    if rows < 2:
        return 1, None
    costs = probe_batch_costs(model, model.tokenize(PROBE_TEXT), sequences=rows)
    return (model.max_seq if costs.pays else 1), costs


def probe_batch_costs(model: ProbeContexts, tokens: Sequence[int], *, sequences: int) -> BatchCosts:
    """Time one token alone against one token in each of `sequences` sequences, in a
    scratch context of PROBE_CTX cells per sequence (freed before returning).

    tokens: realistic text, at least PROBE_CONTEXT + 1 tokens. The result counts as
    warmed up: it decides at once, and the batcher's own decodes refine it.
    """
    if len(tokens) <= PROBE_CONTEXT or sequences < 2:
        raise ValueError("the probe needs 2 sequences and more than 16 tokens")
    context, token = list(tokens[:PROBE_CONTEXT]), tokens[PROBE_CONTEXT]
    alone: list[float] = []
    batched: list[float] = []
    with model.scratch_context(PROBE_CTX, sequences) as kv:
        for seq in range(sequences):
            kv.feed(seq, context)
        for _ in range(PROBE_REPEATS):
            alone.append(_timed(kv, [0], token))
            batched.append(_timed(kv, range(sequences), token) / sequences)
    costs = BatchCosts()
    costs.alone_ms, costs.batched_ms = statistics.median(alone), statistics.median(batched)
    costs.batches = WARM_UP
    return costs


def _timed(kv: KvContext, seqs: Sequence[int], token: int) -> float:
    """Milliseconds of one decode of `token` after the context in each of seqs."""
    started = time.perf_counter()
    kv.decode([(seq, [token], False) for seq in seqs])
    elapsed = (time.perf_counter() - started) * 1000
    for seq in seqs:
        kv.remove(seq, PROBE_CONTEXT)
    return elapsed
