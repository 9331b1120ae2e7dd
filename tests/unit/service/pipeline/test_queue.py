"""The bounded priority queue: order, refusal when full, and its offer event."""

from __future__ import annotations

import asyncio

from edgeagent.service.pipeline.queue import TaskQueue


def test_watchers_hear_every_accepted_offer_at_once_and_none_refused():
    async def scenario():
        queue: TaskQueue[str] = TaskQueue(2)
        heard: list[int] = []
        stop = queue.watch(lambda: heard.append(len(queue)))
        assert queue.offer("low")
        assert heard == [1]  # before offer returned, with the job already queued
        assert queue.offer("high", priority=5)
        assert not queue.offer("refused")  # full: no event
        assert heard == [1, 2]
        assert [await queue.take(), await queue.take()] == ["high", "low"]
        stop()
        assert queue.offer("unheard")
        assert heard == [1, 2]

    asyncio.run(scenario())
