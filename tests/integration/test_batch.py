"""Concurrent tasks with the real SmolLM2 model: batched answers are the serial answers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
from support.catalogs import GREENHOUSE_ACTIONS as CATALOG

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.batch_costs import BatchCosts
from edgeagent.inference.contract import action_spec, schema_spec, select_actions
from edgeagent.inference.engine import Engine
from edgeagent.inference.scheduler import IDLE_S
from edgeagent.inference.task import Task

pytestmark = pytest.mark.model

EVENT = schema_spec(
    {
        "type": "object",
        "properties": {
            "severity": {"enum": ["info", "warning", "error"]},
            "service": {"type": "string", "maxLength": 30},
            "message": {"type": "string", "maxLength": 100},
        },
        "required": ["severity", "service", "message"],
    }
)
ACTIONS = action_spec(select_actions(CATALOG, None))
INPUTS = [
    (EVENT, "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71"),
    (ACTIONS, "Zone 3 is very dry, the soil sensor reads 12 %."),
    (EVENT, "2026-11-30T08:15:02Z mosquitto[812]: Client greenhouse-02 has exceeded timeout"),
    (ACTIONS, "It is 41 C under the roof and the plants are wilting."),
    (EVENT, "sshd[2201]: Failed password for invalid user admin from 203.0.113.7 port 52144"),
    (ACTIONS, "Frost expected tonight, tell the operator."),
    (EVENT, "systemd[1]: edgeagent.service: Watchdog timeout (limit 30s)!"),
    (ACTIONS, "All readings are normal."),
]


@pytest.fixture(scope="module")
def engine(model_path):
    # parallel = 8: batches whether or not they pay on this machine ("auto" measures it).
    cfg = ModelConfig(
        path=model_path, threads=1, n_ctx=1024, n_batch=256, max_tokens=80, parallel=8
    )
    eng = Engine(cfg)
    eng.load()
    yield eng
    eng.close()


def outcome(result):
    if isinstance(result, EdgeAgentError):
        return result.code, result.details.get("partial")
    return result.output, result.completion_tokens


async def burst(engine, tasks):
    return await asyncio.gather(*(engine.answer(t) for t in tasks), return_exceptions=True)


def test_eight_concurrent_tasks_answer_as_eight_serial_ones(engine):
    tasks = [Task(content=text, spec=spec, max_tokens=80) for spec, text in INPUTS]
    serial = []
    for task in tasks:
        try:
            serial.append(engine.answer_blocking(task))
        except EdgeAgentError as exc:
            serial.append(exc)
    stats = engine.call_blocking(lambda runner: runner.batcher.stats)
    before = stats.batched_steps
    batched = asyncio.run(burst(engine, tasks))
    assert [outcome(b) for b in batched] == [outcome(s) for s in serial]
    assert stats.batched_steps > before  # they really shared decodes
    # Alone again: the next task runs in a one-sequence context, as before.
    engine.answer_blocking(tasks[0])
    assert engine.capacity.sequences_held()[0] == 1


def test_below_min_batch_higher_priority_runs_first(engine):
    finished = []

    async def one(task, priority, name):
        await engine.answer(dataclasses.replace(task, priority=priority))
        finished.append(name)

    async def scenario():
        tasks = [Task(content=text, spec=spec, max_tokens=80) for spec, text in INPUTS[:3]]
        # The inference thread is busy while three tasks arrive (below min_batch, 4: one
        # at a time); as in the worker's queue, a running task is not preempted.
        holding = threading.Event()

        def hold(_runner):
            holding.set()
            time.sleep(0.5)

        busy = asyncio.get_running_loop().run_in_executor(None, engine.call_blocking, hold)
        assert await asyncio.to_thread(holding.wait, 10)
        await asyncio.gather(
            one(tasks[0], 0, "low"), one(tasks[1], 0, "low2"), one(tasks[2], 9, "high")
        )
        await busy

    asyncio.run(scenario())
    # The first arrival starts at once on an idle engine; of the two that wait, the
    # higher priority runs first.
    assert finished.index("high") < finished.index("low2")


def test_deadlines_hold_in_a_batch(engine):
    tasks = [Task(content=text, spec=spec, max_tokens=80) for spec, text in INPUTS]
    tasks[5] = Task(
        content=INPUTS[5][1], spec=INPUTS[5][0], max_tokens=80, deadline=time.monotonic() + 0.2
    )
    results = asyncio.run(burst(engine, tasks))
    assert isinstance(results[5], EdgeAgentError)
    assert results[5].code is ErrorCode.DEADLINE_EXCEEDED
    assert sum(not isinstance(r, BaseException) for r in results) >= 6


def test_after_a_burst_the_extra_sequences_are_given_back(engine):
    tasks = [Task(content=text, spec=spec, max_tokens=80) for spec, text in INPUTS]
    capacity = engine.capacity
    engine.answer_blocking(tasks[0])  # alone: a context of one sequence
    one_stream, _ = capacity.buffer_bytes()
    assert capacity.sequences_held()[0] == 1

    def learn_afresh(runner):  # the burst batches
        runner.batcher.costs = BatchCosts()

    engine.call_blocking(learn_afresh)
    asyncio.run(burst(engine, tasks))
    streams, _ = capacity.sequences_held()
    assert streams > 1  # the burst held a KV stream per sequence ...
    assert capacity.buffer_bytes()[0] >= streams * one_stream
    deadline = time.monotonic() + IDLE_S + 30
    while capacity.sequences_held()[0] > 1:  # ... and gives them back once idle
        assert time.monotonic() < deadline, "the batch's streams were kept"
        time.sleep(0.2)
    assert capacity.buffer_bytes()[0] == one_stream
    # The next task alone reuses sequence 0's fixed part and answers as before.
    again = engine.answer_blocking(tasks[1])
    assert again.output is not None


def test_auto_holds_extra_sequences_only_where_the_board_measured_that_they_pay(model_path):
    eng = Engine(ModelConfig(path=model_path, threads=1, n_ctx=1024, n_batch=256, max_tokens=80))
    eng.load()
    try:
        capacity = eng.capacity
        probe = capacity.batch_probe
        assert probe is not None
        assert probe.alone_ms
        assert probe.batched_ms
        assert capacity.max_parallel == (8 if probe.pays else 1)
        assert capacity.parallel == capacity.max_parallel
        tasks = [Task(content=text, spec=spec, max_tokens=80) for spec, text in INPUTS[:4]]
        asyncio.run(burst(eng, tasks))
        if not probe.pays:
            assert capacity.sequences_held()[0] == 1  # never more than one sequence
    finally:
        eng.close()


def test_parallel_1_never_holds_a_second_sequence(model_path):
    cfg = ModelConfig(
        path=model_path, threads=1, n_ctx=1024, n_batch=256, max_tokens=80, parallel=1
    )
    eng = Engine(cfg)
    eng.load()
    try:
        capacity = eng.capacity
        assert (capacity.parallel, capacity.max_parallel, capacity.batch_probe) == (1, 1, None)
        tasks = [Task(content=text, spec=spec, max_tokens=80) for spec, text in INPUTS[:4]]
        asyncio.run(burst(eng, tasks))
        assert capacity.sequences_held()[0] == 1
        assert eng.call_blocking(lambda runner: runner.model.max_seq) == 1
    finally:
        eng.close()
