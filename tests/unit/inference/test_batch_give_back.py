"""Sequences beyond the first: measured before they are held, given back after idle."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.batch_fakes import FakeKv, FakeSlotModel, run_greedy

from edgeagent.inference.batch import Batcher
from edgeagent.inference.batch_costs import PROBE_CONTEXT, WARM_UP, BatchCosts, probe_batch_costs
from edgeagent.inference.batch_rule import BatchRule
from edgeagent.inference.contract import schema_spec
from edgeagent.inference.scheduler import TaskScheduler
from edgeagent.inference.task import Task

SPEC = schema_spec({"type": "object"})


def batched_model():
    """A fake model after a burst: a batch context of 3 streams, sequence 0 holding KV."""
    model = FakeSlotModel(max_seq=4, invariant_rows=3)
    batcher = Batcher(model, BatchRule(2, model.max_seq))
    run_greedy(batcher, {f"t{i}": [i + 1, 2, 3] for i in range(3)}, 4)
    assert model.n_seq == 3
    return model, batcher


def test_after_a_batch_the_streams_are_given_back_and_sequence_0_keeps_its_kv():
    model, batcher = batched_model()
    held = list(model.kv.tokens[0])
    assert held
    assert batcher.give_back()
    assert model.n_seq == 1
    assert model.streams[-1] == (1, {0: 0})
    assert model.kv.tokens[0] == held
    assert not batcher.give_back()  # nothing left to give back


def test_nothing_is_given_back_while_a_sequence_is_open():
    model, batcher = batched_model()
    handle = batcher.open()
    assert not batcher.give_back()
    assert model.n_seq == 3
    done = threading.Thread(target=handle.close)
    done.start()
    while done.is_alive():
        batcher.step(wait_s=0.01)
    assert batcher.give_back()


def test_an_empty_sequence_0_moves_nothing():
    model, batcher = batched_model()
    model.kv.tokens[0] = []
    assert batcher.give_back()
    assert model.streams[-1] == (1, {})


class RecordingBatcher(Batcher):
    """Counts give-backs and the thread they run on."""

    def __init__(self, model):
        super().__init__(model, BatchRule(max_parallel=2))
        self.given_back = []

    def give_back(self):
        self.given_back.append(threading.current_thread().name)
        return super().give_back()


@contextlib.contextmanager
def scheduler_on(batcher, idle_s):
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    scheduler = TaskScheduler(
        batcher,
        run=lambda task: task.content,
        on_inference_thread=inference.submit,
        idle_s=idle_s,
    )
    try:
        yield scheduler
    finally:
        scheduler.close()
        inference.shutdown(wait=True)


def answer(scheduler, text):
    return scheduler.answer(Task(content=text, spec=SPEC, max_tokens=8)).result(timeout=10)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_scheduler_gives_the_streams_back_on_the_inference_thread_after_idle():
    model, _ = batched_model()
    batcher = RecordingBatcher(model)
    with scheduler_on(batcher, idle_s=0.05) as scheduler:
        assert answer(scheduler, "a") == "a"
        wait_for(lambda: model.n_seq == 1)
        assert batcher.given_back == ["inference_0"]


def test_a_task_within_idle_s_keeps_the_streams():
    model, _ = batched_model()
    batcher = RecordingBatcher(model)
    with scheduler_on(batcher, idle_s=0.5) as scheduler:
        for text in "abcde":  # back to back, each well within idle_s of the last
            assert answer(scheduler, text) == text
            time.sleep(0.1)
        assert model.n_seq == 3
        assert batcher.given_back == []
        wait_for(lambda: model.n_seq == 1)
    assert len(batcher.given_back) == 1


def test_a_closed_scheduler_gives_nothing_back():
    model, _ = batched_model()
    batcher = RecordingBatcher(model)
    with scheduler_on(batcher, idle_s=0.05) as scheduler:
        answer(scheduler, "a")
        scheduler.close()
        time.sleep(0.2)
    assert batcher.given_back == []
    assert model.n_seq == 3


class ScratchModel:
    """probe_batch_costs' model: scratch contexts whose decodes take scripted times."""

    def __init__(self, alone_s, per_token_s):
        self.alone_s, self.per_token_s = alone_s, per_token_s
        self.opened, self.closed = [], 0

    @contextlib.contextmanager
    def scratch_context(self, n_ctx, n_seq):
        self.opened.append((n_ctx, n_seq))
        kv = TimedKv(n_seq, n_ctx, self)
        try:
            yield kv
        finally:
            self.closed += 1


class TimedKv(FakeKv):
    def __init__(self, n_seq, n_ctx, model):
        super().__init__(n_seq, n_ctx=n_ctx)
        self.model = model

    def decode(self, parts):
        if all(len(tokens) == 1 for _, tokens, _ in parts):
            rows = len(parts)
            time.sleep(self.model.alone_s if rows == 1 else rows * self.model.per_token_s)
        return super().decode(parts)


@pytest.mark.parametrize(
    ("alone_s", "per_token_s", "pays"),
    [(0.02, 0.03, False), (0.04, 0.005, True)],
    ids=["compute-bound", "bandwidth-bound"],
)
def test_the_load_time_probe_says_whether_a_batched_token_is_cheaper(alone_s, per_token_s, pays):
    model = ScratchModel(alone_s, per_token_s)
    costs = probe_batch_costs(model, list(range(1, 40)), sequences=4)
    assert costs.pays is pays
    assert costs.batches == WARM_UP  # decides at once: no burst of batches to learn it
    assert costs.worth_batching() is pays or costs.skipped == 1
    assert model.opened == [(256, 4)]
    assert model.closed == 1


def test_the_probe_needs_two_sequences_and_some_text():
    model = ScratchModel(0.0, 0.0)
    with pytest.raises(ValueError, match="probe"):
        probe_batch_costs(model, list(range(PROBE_CONTEXT)), sequences=4)
    with pytest.raises(ValueError, match="probe"):
        probe_batch_costs(model, list(range(40)), sequences=1)


def test_a_probed_batcher_that_does_not_pay_never_allocates_streams(monkeypatch):
    monkeypatch.setattr("edgeagent.inference.batch_costs.MEASURE_EVERY", 10**9)
    model = FakeSlotModel(max_seq=4, invariant_rows=3)
    costs = BatchCosts()
    costs.alone_ms, costs.batched_ms, costs.batches = 1.0, 1.0, WARM_UP
    batcher = Batcher(model, BatchRule(2, model.max_seq), costs=costs)
    run_greedy(batcher, {f"t{i}": [i + 1, 2] for i in range(3)}, 3)
    assert model.streams == []
