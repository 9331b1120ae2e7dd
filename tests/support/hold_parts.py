"""A daemon from fakes with its hold desk, on a task store file, for the holds' unit tests.

`HoldParts` runs what the holds need (admission, worker, the desk's loops, the daemon's
message routing) on a FakeLink and a FakeEngine whose set_irrigation answers are held
(`[catalog] min_confidence` with no confidence known). `crash()` stops it dead, like a
SIGKILL: nothing finished, nothing acknowledged; a new HoldParts on the same file is the
restarted daemon. The wall clock is the test's (`now`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edgeagent.config import Config
from edgeagent.mqtt.incoming import Incoming
from edgeagent.protocol.topics import Topics
from edgeagent.service.assembly import build_hold_desk, topics_for, wire
from edgeagent.service.holds.desk import HoldDesk
from edgeagent.service.holds.learning import Learner
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.taskstore import TaskStore
from support.fake_engine import FakeEngine, FakeMemory, FakeNotifier, service_config
from support.fake_link import FakeLink

TOPICS = Topics("edgeagent", "dev1", "edgeagent")
ACTION = "edgeagent/dev1/actions/set_irrigation"
ERRORS = "edgeagent/dev1/errors"
START = 1_800_000_000.0  # the fake wall clock's start (2027-01-15T08:00:00Z)


def held_task(task_id: str = "t1", **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "input": "Water zone 3 for 20 minutes", "action": "set_irrigation"} | (
        extra
    )


def held_config(**sections: dict[str, Any]) -> Config:
    catalog = {"min_confidence": 0.5} | sections.pop("catalog", {})
    return service_config(catalog=catalog, **sections)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class HoldParts:
    def __init__(
        self,
        path: Path,
        *,
        link: FakeLink | None = None,
        cfg: Config | None = None,
        clock: Clock | None = None,
        learner: Learner | None = None,
    ) -> None:
        self.cfg = cfg or held_config()
        self.link = link or FakeLink()
        self.clock = clock or Clock()
        self.store = AsyncTaskStore(TaskStore(path, max_age_s=3600, max_rows=1000))
        self.holds: HoldDesk = build_hold_desk(
            self.cfg,
            topics=TOPICS,
            link=self.link,
            store=self.store,
            path=path,
            learner=learner,
            clock=self.clock,
        )
        self.engine = FakeEngine()
        self.daemon = wire(
            self.cfg,
            topics=topics_for(self.cfg),
            link=self.link,
            store=self.store,
            notifier=FakeNotifier(),
            engine=self.engine,
            memory=FakeMemory(),
            holds=self.holds,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> HoldParts:
        await self.engine.start(n_ctx=2048)
        self.link.start(self.daemon._on_message)
        self._tasks = [
            asyncio.create_task(self.daemon.admission.run()),
            asyncio.create_task(self.daemon.worker.run()),
            asyncio.create_task(self.holds.run()),
        ]
        return self

    async def crash(self) -> None:
        """Stop dead: nothing more published, acknowledged or recorded."""
        self.daemon.admission.close()
        for task in self._tasks:
            task.cancel()
        self.daemon.delivery.cancel_all()
        self.holds.outbox.cancel_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.link.disconnect()
        await self.holds.stop(within_s=0)  # cancels what is left, closes the holds table
        self.store.close()

    # -- playing the operator ------------------------------------------------------------

    def confirm(self, task_id: str = "t1", body: Any = None, **kwargs: Any) -> Incoming:
        payload = {"by": "alice"} if body is None else body
        topic = f"edgeagent/dev1/held/{task_id}/confirm"
        return self.link.deliver(payload, topic=topic, **kwargs)

    def reject(self, task_id: str = "t1", body: Any = None, **kwargs: Any) -> Incoming:
        payload = {"by": "bob"} if body is None else body
        return self.link.deliver(payload, topic=f"edgeagent/dev1/held/{task_id}/reject", **kwargs)

    async def held(self, task_id: str = "t1") -> Any:
        """The task's held reply arrived and its hold is open (its notice published)."""
        await self.link.wait_for_publish(TOPICS.held(task_id))
        return self.link.on(TOPICS.held(task_id))[-1].body

    def notices(self, task_id: str = "t1") -> list[str]:
        return [p.payload for p in self.link.on(TOPICS.held(task_id))]
