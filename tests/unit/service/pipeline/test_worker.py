"""The service worker hands a batch's worth of queued jobs to an engine that batches.

The engine here is the service tests' fake (tests/support/fake_engine.py) with a batch
rule of its own (inference/batch_rule.py), which the worker reads through `at_once`.
"""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs
from support.aio import run
from support.fake_engine import SCHEMA, FakeEngine
from support.service_parts import make_daemon

from edgeagent.inference.batch_rule import BatchRule

STATUS = "edgeagent/dev1/status"


class BatchingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.batching = BatchRule(min_batch=3, max_parallel=4)
        self.inside = 0
        self.most = 0
        self.entered = asyncio.Event()

    async def answer(self, task):
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.entered.set()
        try:
            return await super().answer(task)
        finally:
            self.inside -= 1

    async def until_inside(self, count):
        async with asyncio.timeout(5):
            while self.inside < count:
                self.entered.clear()
                await self.entered.wait()


def task(n):
    return {"id": f"t{n}", "input": f"Porto, {20 + n} degrees", "schema": SCHEMA}


async def serving(daemon):
    served = asyncio.create_task(daemon.serve())
    await daemon.link.wait_for_publish(STATUS)
    return served


def test_queued_jobs_that_make_a_batch_run_together():
    async def scenario():
        engine = BatchingEngine()
        daemon = make_daemon(engine=engine, queue={"size": 16})
        served = await serving(daemon)
        engine.hold = True
        daemon.link.deliver(task(0))
        await engine.running.wait()
        await daemon.admission.admit(daemon.link.message(task(1)))
        assert daemon.worker.lanes == 1  # 1 running + 1 waiting < min_batch 3
        await daemon.admission.admit(daemon.link.message(task(2)))
        # The offer that makes a batch adds the lanes at once: up to `parallel` run.
        assert daemon.worker.lanes == engine.batching.parallel
        for n in range(3, 6):
            await daemon.admission.admit(daemon.link.message(task(n)))
        await engine.until_inside(engine.batching.parallel)
        assert len(daemon.queue) == 2
        engine.hold = False
        for _ in range(6):
            engine.release()
            await asyncio.sleep(0.02)
        await daemon.link.wait_for_acks(6)
        assert engine.most == engine.batching.parallel
        daemon.request_stop()
        assert await served == 0

    run(scenario())


def test_below_min_batch_one_job_at_a_time_and_the_queue_bound_holds():
    async def scenario():
        engine = BatchingEngine()
        daemon = make_daemon(engine=engine, queue={"size": 1})
        served = await serving(daemon)
        engine.hold = True
        daemon.link.deliver(task(0))
        await engine.running.wait()
        await daemon.admission.admit(daemon.link.message(task(1)))
        # The worker looked when the job was queued: 1 running + 1 waiting < min_batch 3.
        assert daemon.worker.lanes == 1
        assert len(daemon.queue) == 1
        daemon.link.deliver(task(2))  # the queue is full
        await daemon.link.wait_for_acks(1)
        assert daemon.link.bodies("edgeagent/dev1/results/t2")[0]["error"]["code"] == "BUSY"
        engine.hold = False
        engine.release()
        await daemon.link.wait_for_acks(3)
        assert engine.most == 1
        daemon.request_stop()
        assert await served == 0

    run(scenario())


def test_shutdown_hands_back_every_running_job_of_a_batch(tmp_path):
    async def scenario():
        engine = BatchingEngine()
        daemon = make_daemon(
            tmp_path / "j.sqlite3", engine=engine, queue={"size": 16, "shutdown_grace_s": 0.05}
        )
        served = await serving(daemon)
        engine.hold = True
        daemon.link.deliver(task(0))
        await engine.running.wait()
        for n in range(1, 4):
            await daemon.admission.admit(daemon.link.message(task(n)))
        await engine.until_inside(4)
        with capture_logs() as logs:
            daemon.request_stop()
            assert await served == 0
        handed = sorted(e["task_id"] for e in logs if e["event"] == "task handed back")
        assert handed == ["t0", "t1", "t2", "t3"]
        assert daemon.link.ack_attempts == []

    run(scenario())
