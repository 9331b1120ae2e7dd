"""The worker asks the learner for examples and hands them to the engine with the task."""

from __future__ import annotations

import asyncio

from support.fake_engine import FakeEngine, service_config
from support.fake_link import FakeLink
from support.service_parts import Parts

from edgeagent.inference.shots import Shot
from edgeagent.service.learning.learner import Learner
from edgeagent.service.learning.store import LearnedExample, LearnedStore
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.taskstore import TaskStore


def learning_parts(tmp_path, *, learn: bool) -> Parts:
    cfg = service_config(tmp_path, catalog={"learn": learn})
    store = LearnedStore(tmp_path / "learned.sqlite3", max_rows=10)
    store.add(
        LearnedExample(
            text="Water zone 2 for 5 minutes.",
            action="set_irrigation",
            args={"zone": 2, "minutes": 5},
            decision="confirmed",
            model_action="set_irrigation",
            model_args={"zone": 2, "minutes": 5},
            task_id="old",
            by="ana",
            at=0.0,
        )
    )
    return Parts(
        cfg=cfg,
        link=FakeLink(),
        store=AsyncTaskStore(TaskStore(":memory:", max_age_s=3600, max_rows=100)),
        engine=FakeEngine(),
        learner=Learner(store, actions=cfg.actions, settings=cfg.catalog),
    )


async def run_task(parts: Parts, request: dict) -> None:
    parts.link.deliver(request, response_topic="replies/a")
    await parts.link.wait_for_acks(1)


def test_an_action_task_carries_the_most_similar_learned_examples(tmp_path):
    async def scenario():
        parts = await (learning_parts(tmp_path, learn=True)).start()
        await run_task(
            parts,
            {"id": "t1", "input": "Water zone 4 for 5 minutes.", "actions": ["set_irrigation"]},
        )
        (task,) = parts.engine.tasks
        assert task.shots == (
            Shot("Water zone 2 for 5 minutes.", "set_irrigation", {"zone": 2, "minutes": 5}),
        )
        await parts.crash()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_no_examples_when_learning_is_off_or_for_schema_tasks(tmp_path):
    async def scenario():
        parts = await (learning_parts(tmp_path, learn=False)).start()
        await run_task(
            parts,
            {"id": "t1", "input": "Water zone 4 for 5 minutes.", "actions": ["set_irrigation"]},
        )
        assert parts.engine.tasks[0].shots == ()
        await parts.crash()
        on = await (learning_parts(tmp_path / "on", learn=True)).start()
        schema = {"type": "object", "properties": {"zone": {"type": "integer"}}}
        await run_task(on, {"id": "t2", "input": "Water zone 4 for 5 minutes.", "schema": schema})
        assert on.engine.tasks[0].shots == ()
        await on.crash()

    (tmp_path / "on").mkdir()
    asyncio.run(asyncio.wait_for(scenario(), 10))
