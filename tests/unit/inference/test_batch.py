"""The batcher on a fake model: modes, priorities, decode sizes, deadlines, hand-back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support.batch_fakes import (
    N_VOCAB,
    FakeSlotModel,
    greedy,
    logits_after,
    open_all,
    run_all,
    run_greedy,
    solo,
)

from edgeagent.errors import EdgeAgentError, ErrorCode, TaskHandedBack
from edgeagent.inference.batch import Batcher
from edgeagent.inference.batch_costs import MEASURE_EVERY, BatchCosts
from edgeagent.inference.batch_costs import WARM_UP as BATCH_WARM_UP
from edgeagent.inference.batch_rule import BatchRule
from edgeagent.inference.contract import schema_spec
from edgeagent.inference.scheduler import TaskScheduler
from edgeagent.inference.task import Task


def test_below_min_batch_tasks_run_one_at_a_time_highest_priority_first():
    model = FakeSlotModel()
    batcher = Batcher(model, BatchRule(3, model.max_seq))
    handles = open_all(batcher, {"low": 0, "high": 5})
    log = []
    jobs = {n: (lambda n=n: greedy(handles[n], [n == "high", 3, 4], 5, log, n)) for n in handles}
    results, errors = run_all(batcher, jobs)
    assert not errors
    assert log == ["high"] * 5 + ["low"] * 5
    assert all(len(d) == 1 for d in model.kv.decodes)
    assert not model.streams  # one sequence: the context stays as it is
    for name, prompt in (("high", [1, 3, 4]), ("low", [0, 3, 4])):
        assert results[name] == solo(prompt, 5)


def test_from_min_batch_on_sequences_share_decodes_within_the_invariant_size():
    model = FakeSlotModel(max_seq=4, invariant_rows=3)
    batcher = Batcher(model, BatchRule(3, model.max_seq))
    prompts = {f"t{i}": [i + 1, 2, 3] for i in range(4)}
    run_greedy(batcher, prompts, 6)
    # One KV stream per sequence, but no more than tokens one exact decode holds (3): the
    # fourth task waits for a stream.
    assert model.streams[0] == (3, {})
    assert any(len(d) > 1 for d in model.kv.decodes)
    # No decode mixes sequences beyond the size whose logits equal single steps.
    assert all(sum(n for _, n in d) <= 3 for d in model.kv.decodes if len(d) > 1)
    assert batcher.stats.batched_steps > 0


def test_a_running_sequence_keeps_its_kv_when_the_batch_starts():
    model = FakeSlotModel(max_seq=4)
    batcher = Batcher(model, BatchRule(2, model.max_seq))
    first = batcher.open()
    started = threading.Event()
    go_on = threading.Event()
    log = []

    def long_job():
        first.prefill([5, 6])
        first.feed([7])
        started.set()
        go_on.wait(5)
        out = [int(np.argmax(first.logits()))]
        first.feed(out)
        first.close()
        return out

    def late_job():
        assert started.wait(5)
        handle = batcher.open()
        go_on.set()
        return greedy(handle, [1, 1], 3, log, "late")

    results, errors = run_all(batcher, {"long": long_job, "late": late_job})
    assert not errors
    assert model.streams[0] == (3, {0: 0})
    assert results["long"] == [int(np.argmax(logits_after([5, 6, 7])))]
    assert results["late"] == solo([1, 1], 3)


def test_feed_all_rewind_and_a_long_feed():
    model = FakeSlotModel(invariant_rows=2)
    batcher = Batcher(model, BatchRule(4, model.max_seq))
    handle = batcher.open()

    def job():
        handle.prefill([1, 2])
        rows = handle.feed_all([3, 4, 5])
        assert [int(np.argmax(r)) for r in rows] == [6 % N_VOCAB, 10 % N_VOCAB, 15 % N_VOCAB]
        handle.rewind(2)
        assert model.kv.tokens[0] == [1, 2, 3]
        handle.feed([9] * 10)  # longer than invariant_rows: decoded on its own
        handle.close()

    _, errors = run_all(batcher, {"job": job})
    assert not errors
    assert model.kv.decodes[-1] == [(0, 10)]


def test_a_waiting_sequence_past_its_deadline_is_failed():
    model = FakeSlotModel()
    batcher = Batcher(model, BatchRule(4, model.max_seq))
    busy = batcher.open(priority=1)
    late = batcher.open(deadline=time.monotonic() + 0.05)
    release = threading.Event()

    def hold():
        busy.prefill([1])
        release.wait(5)  # holds the only sequence: `late` has to wait
        busy.close()

    def wait_too_long():
        try:
            late.prefill([2])
        finally:
            release.set()
            late.close()

    _, errors = run_all(batcher, {"hold": hold, "late": wait_too_long})
    assert isinstance(errors["late"], EdgeAgentError)
    assert errors["late"].code is ErrorCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("when", ["waiting", "running"])
def test_a_cancelled_sequence_is_handed_back(when):
    model = FakeSlotModel()
    batcher = Batcher(model, BatchRule(4, model.max_seq))
    cancel = threading.Event()
    handle = batcher.open(cancel=cancel)
    if when == "waiting":
        cancel.set()

    def job():
        try:
            handle.prefill([1])
            cancel.set()
            handle.feed([2])
        finally:
            handle.close()

    _, errors = run_all(batcher, {"job": job})
    assert isinstance(errors["job"], TaskHandedBack)


def test_not_exact_decodes_as_many_sequences_as_fit():
    model = FakeSlotModel(max_seq=4, invariant_rows=1)
    batcher = Batcher(model, BatchRule(2, model.max_seq), exact=False)
    prompts = {f"t{i}": [i + 1, 5] for i in range(4)}
    run_greedy(batcher, prompts, 4)
    assert model.streams[0] == (4, {})
    assert max(len(d) for d in model.kv.decodes) == 4


def test_a_step_with_no_sequence_open_returns_when_woken():
    batcher = Batcher(FakeSlotModel())
    started = time.monotonic()
    batcher.step(wait_s=0.05)  # nothing open, nobody wakes it: waits it out
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.01, batcher.wake).start()
    started = time.monotonic()
    batcher.step(wait_s=10)
    assert time.monotonic() - started < 5


class SlowStepBatcher(Batcher):
    """Steps that wait long for their sequences: a task must never wait one out."""

    def step(self, *, wait_s=10.0):
        super().step(wait_s=wait_s)


def test_tasks_back_to_back_do_not_wait_for_the_step_of_the_previous_one():
    inference = ThreadPoolExecutor(max_workers=1)
    scheduler = TaskScheduler(
        SlowStepBatcher(FakeSlotModel(), BatchRule(max_parallel=2)),
        run=lambda task: task.content,  # opens no sequence: the loop's step has none
        on_inference_thread=inference.submit,
    )
    spec = schema_spec({"type": "object"})
    started = time.monotonic()
    try:
        for i in range(3):
            assert scheduler.answer(Task(content=str(i), spec=spec, max_tokens=8)).result(
                timeout=30
            ) == str(i)
        assert time.monotonic() - started < 5
    finally:
        scheduler.close()
        inference.shutdown(wait=True)


def test_where_a_batched_token_costs_as_much_as_one_alone_batches_are_only_tried_now_and_then():
    costs = BatchCosts()
    costs.decoded(40.0, sequences=1)
    for _ in range(BATCH_WARM_UP):
        assert costs.worth_batching()
        costs.decoded(7 * 40.0, sequences=7)  # compute-bound: 7 tokens cost 7 steps
    tried = [costs.worth_batching() for _ in range(4 * MEASURE_EVERY)]
    assert sum(tried) == 4


def test_where_batched_tokens_are_cheap_batches_go_on():
    costs = BatchCosts()
    costs.decoded(80.0, sequences=1)
    for _ in range(3 * BATCH_WARM_UP):
        costs.decoded(2 * 80.0, sequences=8)  # bandwidth-bound: 8 tokens cost 2 steps
        assert costs.worth_batching()


def test_when_batches_do_not_pay_sequences_run_one_at_a_time_with_the_same_answers(
    monkeypatch,
):
    monkeypatch.setattr("edgeagent.inference.batch_costs.MEASURE_EVERY", 10**9)  # no re-measuring
    model = FakeSlotModel(max_seq=4, invariant_rows=3)
    batcher = Batcher(model, BatchRule(3, model.max_seq))
    batcher.costs.alone_ms, batcher.costs.batched_ms = 1.0, 5.0
    batcher.costs.batches = BATCH_WARM_UP
    prompts = {f"t{i}": [i + 1, 2, 3] for i in range(3)}
    run_greedy(batcher, prompts, 3)
    assert not model.streams  # never switched to a batch context
    assert all(len(d) == 1 for d in model.kv.decodes)
