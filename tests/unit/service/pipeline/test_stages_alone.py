"""Admission and the worker, each built alone around fakes of the stage after it.

The rest of the pipeline's tests run the stages together (support/service_parts.py);
these show each stage's own contract with what it hands on: admission queues a task or
answers it through `Replier.answer_once`, the worker hands a job's reply to
`Finisher.finish`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from support.aio import run
from support.fake_engine import SCHEMA, FakeEngine, FakeMemory, FakeNotifier, service_config
from support.fake_link import FakeLink
from support.service_parts import preparations_done

from edgeagent.protocol.reply import ErrorReply, OkReply
from edgeagent.service.assembly import build_telemetry, topics_for
from edgeagent.service.pipeline.admission import Admission
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.jobs import Job
from edgeagent.service.pipeline.ledger import Ledger
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.taskstore import TaskStore
from edgeagent.service.pipeline.worker import Worker


class RecordingReplier:
    """Delivery as admission and the worker see it: records, publishes nothing."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, Any, Any]] = []
        self.resumed: list[tuple[Any, Any]] = []
        self.answered: list[tuple[Any, ErrorReply]] = []
        self.done = asyncio.Event()

    async def finish(self, entry: Any, reply: Any, action: Any = None, **_: Any) -> None:
        self.finished.append((entry.task_id, reply, action))
        self.done.set()

    def resume(self, entry: Any, plan: Any) -> None:
        self.resumed.append((entry, plan))

    def answer_once(self, waiting: Any, reply: ErrorReply) -> None:
        self.answered.append((waiting, reply))


def parts() -> dict[str, Any]:
    cfg = service_config()
    link = FakeLink()
    store = AsyncTaskStore(TaskStore(":memory:", max_age_s=60, max_rows=100))
    queue: TaskQueue[Job] = TaskQueue(cfg.queue.size)
    engine = FakeEngine()
    telemetry = build_telemetry(
        cfg,
        topics=topics_for(cfg),
        link=link,
        notifier=FakeNotifier(),
        queue=queue,
        engine=engine,
        memory=FakeMemory(),
        store=store,
    )
    return {
        "cfg": cfg,
        "link": link,
        "store": store,
        "queue": queue,
        "engine": engine,
        "telemetry": telemetry,
        "ledger": Ledger(link),
        "replier": RecordingReplier(),
    }


def admission(p: dict[str, Any]) -> Admission:
    return Admission(
        p["cfg"],
        topics=topics_for(p["cfg"]),
        queue=p["queue"],
        ledger=p["ledger"],
        store=p["store"],
        delivery=p["replier"],
        counters=p["telemetry"].counters,
    )


def test_admission_alone_queues_a_task_and_answers_a_broken_one_once():
    async def scenario():
        p = parts()
        stage = admission(p)
        await stage.admit(p["link"].message(b"{not json"))
        ((waiting, refusal),) = p["replier"].answered
        assert refusal.error.code == "INVALID_REQUEST"
        assert waiting.route.topic == "edgeagent/dev1/errors"
        await stage.admit(p["link"].message({"id": "t1", "input": "Porto, 21", "schema": SCHEMA}))
        await preparations_done(stage)
        assert len(p["queue"]) == 1
        assert p["replier"].finished == []
        assert p["replier"].resumed == []
        p["store"].close()

    run(scenario())


def test_the_worker_alone_hands_the_answer_to_delivery():
    async def scenario():
        p = parts()
        stage = admission(p)
        await p["engine"].start(n_ctx=2048)
        await stage.admit(p["link"].message({"id": "t1", "input": "Porto, 21", "schema": SCHEMA}))
        await preparations_done(stage)
        worker = Worker(
            p["cfg"],
            queue=p["queue"],
            engine=p["engine"],
            delivery=p["replier"],
            store=p["store"],
            ledger=p["ledger"],
            telemetry=p["telemetry"],
        )
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(p["replier"].done.wait(), 5)
        running.cancel()
        ((task_id, reply, action),) = p["replier"].finished
        assert (task_id, action) == ("t1", None)  # a schema task dispatches nothing
        assert isinstance(reply, OkReply)
        assert p["link"].acked == []  # acknowledging is the ledger's, after delivery
        p["store"].close()

    run(scenario())
