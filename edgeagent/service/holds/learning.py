"""The learner hook: told of every committed resolution, never on the loop, never failing it.

A learner (the learning store) is optional and injected (assembly). A synchronous
`record` runs on the task store's thread (its SQLite writes then never meet the store's;
it must be quick: the store's call timeout applies), an async one as a task with a
timeout. Whatever it raises is logged and dropped.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from edgeagent.service.holds.asyncholds import StoreThread
from edgeagent.service.holds.resolution import HoldResolution

log = structlog.get_logger("edgeagent.service.holds.learning")

LEARNER_TIMEOUT_S = 10.0  # an async learner's call


class Learner(Protocol):
    def record(self, resolution: HoldResolution) -> Any: ...


class LearnerHook:
    def __init__(self, learner: Learner | None, thread: StoreThread) -> None:
        self._learner = learner
        self._thread = thread
        self._tasks: set[asyncio.Task[None]] = set()

    def tell(self, resolution: HoldResolution) -> None:
        if self._learner is None:
            return
        record = self._learner.record
        if inspect.iscoroutinefunction(record):
            task = asyncio.create_task(_told(record(resolution), resolution.task_id))
        else:
            call = self._thread.call("learner", lambda: _safely(record, resolution), None)
            task = asyncio.create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


async def _told(awaitable: Any, task_id: str) -> None:
    try:
        async with asyncio.timeout(LEARNER_TIMEOUT_S):
            await awaitable
    except Exception:  # the learner's failure is never the resolution's
        log.exception("the learner failed", task_id=task_id)


def _safely(record: Callable[[HoldResolution], Any], resolution: HoldResolution) -> None:
    try:
        record(resolution)
    except Exception:  # on the store thread: must not degrade the store
        log.exception("the learner failed", task_id=resolution.task_id)
