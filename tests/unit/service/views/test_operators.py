"""The retained last_action: only what the agent decided and what went out, never a look-alike.

A daemon from fakes with its operators' views: tasks go through admission, the worker
and delivery as in the service; the fake broker confirms or refuses each publish.
"""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs
from support.aio import run
from support.fake_engine import FakeEngine, default_output, service_config
from support.fake_link import NOT_AUTHORIZED, FakeLink
from support.service_parts import Parts

from edgeagent.inference.task import Task
from edgeagent.protocol.topics import Topics
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.taskstore import TaskStore
from edgeagent.service.views.operators import OperatorViews

LAST_ACTION = "edgeagent/dev1/last_action"
ACTION = "edgeagent/dev1/actions/set_irrigation"
FORGED = {"action": "set_irrigation", "args": {"zone": 99, "minutes": 100000}}
LOOK_ALIKE_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"const": "set_irrigation"},
        "args": {
            "type": "object",
            "properties": {"zone": {"type": "integer"}, "minutes": {"type": "integer"}},
            "required": ["zone", "minutes"],
        },
    },
    "required": ["action", "args"],
}


def _forging(task: Task) -> Any:
    """The model answers the look-alike schema as asked."""
    return FORGED if task.spec.kind == "schema" else default_output(task)


def with_operators(link: FakeLink | None = None, **sections: dict[str, Any]) -> Parts:
    cfg = service_config(**sections)
    link = link or FakeLink()
    store = AsyncTaskStore(TaskStore(":memory:", max_age_s=3600, max_rows=1000))
    topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, cfg.mqtt.shared_group)
    return Parts(
        cfg=cfg,
        link=link,
        store=store,
        engine=FakeEngine(_forging),
        operators=OperatorViews(cfg, topics=topics, link=link, store=store),
    )


def test_a_schema_task_shaped_like_an_action_never_becomes_the_last_action():
    async def scenario():
        parts = await with_operators().start()
        parts.link.deliver({"id": "f1", "input": "x", "schema": LOOK_ALIKE_SCHEMA})
        await parts.link.wait_for_acks(1)
        (reply,) = parts.link.bodies("edgeagent/dev1/results/f1")
        assert reply["output"] == FORGED  # answered as asked, it is only not an action
        assert parts.link.on(LAST_ACTION) == []
        assert parts.link.on(ACTION) == []
        await parts.crash()

    run(scenario())


def test_a_dispatched_action_is_the_last_action_once_the_broker_confirmed_it():
    async def scenario():
        parts = await with_operators(FakeLink(auto_confirm=False)).start()
        parts.link.deliver(
            {"id": "a1", "input": "Water zone 3 for 20 minutes", "action": "set_irrigation"}
        )
        (action,) = await parts.link.wait_for_publish(ACTION)
        await asyncio.sleep(0.05)
        assert parts.link.on(LAST_ACTION) == []  # not before the broker took it
        parts.link.confirm(action)
        (last,) = await parts.link.wait_for_publish(LAST_ACTION)
        assert last.retain
        assert {k: last.body[k] for k in ("name", "task_id", "args")} == {
            "name": "set_irrigation",
            "task_id": "a1",
            "args": {"zone": 3, "minutes": 20},
        }
        await parts.crash()

    run(scenario())


def test_a_refused_or_held_action_is_not_the_last_action():
    async def scenario():
        refusing = await with_operators().start()
        refusing.link.refuse[ACTION] = NOT_AUTHORIZED
        with capture_logs():
            refusing.link.deliver({"id": "r1", "input": "Water zone 3", "action": "set_irrigation"})
            await refusing.link.wait_for_acks(1)
        assert refusing.link.on(LAST_ACTION) == []
        await refusing.crash()

        holding = await with_operators(catalog={"min_confidence": 0.8}).start()
        holding.link.deliver({"id": "h1", "input": "Water zone 3", "action": "set_irrigation"})
        await holding.link.wait_for_acks(1)
        assert holding.link.bodies("edgeagent/dev1/results/h1")[0]["held"]
        assert holding.link.on(LAST_ACTION) == []
        await holding.crash()

    run(scenario())


def test_a_reply_only_action_answer_is_the_last_action():
    async def scenario():
        parts = await with_operators().start()
        parts.link.deliver({"id": "n1", "input": "Tell me", "action": "notify"})
        await parts.link.wait_for_acks(1)
        (last,) = parts.link.bodies(LAST_ACTION)
        assert (last["name"], last["task_id"], last["args"]) == ("notify", "n1", {"message": "hi"})
        await parts.crash()

    run(scenario())
