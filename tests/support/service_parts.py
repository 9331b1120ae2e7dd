"""A daemon built from fakes, and the pipeline's stages run without a daemon.

`Parts` runs what handles tasks (admission and worker loops, deliveries) so a test can
stop it dead at any step — `crash()` cancels everything without a shutdown, like a
SIGKILL — and start a new one on the same task store file, as after a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edgeagent.config import Config
from edgeagent.mqtt.incoming import Incoming
from edgeagent.service.assembly import build_telemetry, topics_for, wire
from edgeagent.service.daemon import Daemon
from edgeagent.service.learning.learner import Learner
from edgeagent.service.pipeline.admission import Admission
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.jobs import Job
from edgeagent.service.pipeline.queue import TaskQueue
from edgeagent.service.pipeline.stages import build_stages
from edgeagent.service.pipeline.taskstore import TaskStore
from edgeagent.service.views.operators import OperatorViews
from support.fake_engine import FakeEngine, FakeMemory, FakeNotifier, service_config
from support.fake_link import FakeLink


def make_daemon(
    store_path: Path | str = ":memory:",
    *,
    link: FakeLink | None = None,
    engine: FakeEngine | None = None,
    store: AsyncTaskStore | None = None,
    cfg: Config | None = None,
    **sections: dict[str, Any],
) -> Daemon:
    cfg = cfg or service_config(**sections)
    return wire(
        cfg,
        topics=topics_for(cfg),
        link=link or FakeLink(),
        store=store or AsyncTaskStore(TaskStore(store_path, max_age_s=3600, max_rows=1000)),
        notifier=FakeNotifier(),
        engine=engine or FakeEngine(),
        memory=FakeMemory(),
    )


class Parts:
    """One 'process': the pipeline's stages (pipeline/stages.py) on fakes, running - no
    daemon around them, so no lifecycle, heartbeat loop or memory loop."""

    def __init__(
        self,
        store_path: Path | str = ":memory:",
        *,
        link: FakeLink | None = None,
        engine: FakeEngine | None = None,
        store: AsyncTaskStore | None = None,
        cfg: Config | None = None,
        operators: OperatorViews | None = None,
        learner: Learner | None = None,
        **sections: dict[str, Any],
    ) -> None:
        self.cfg = cfg or service_config(**sections)
        self.link = link or FakeLink()
        self.engine = engine or FakeEngine()
        self.store = store or AsyncTaskStore(TaskStore(store_path, max_age_s=3600, max_rows=1000))
        topics = topics_for(self.cfg)
        self.queue: TaskQueue[Job] = TaskQueue(self.cfg.queue.size)
        self.telemetry = build_telemetry(
            self.cfg,
            topics=topics,
            link=self.link,
            notifier=FakeNotifier(),
            queue=self.queue,
            engine=self.engine,
            memory=FakeMemory(),
            store=self.store,
            operators=operators,
        )
        stages = build_stages(
            self.cfg,
            topics=topics,
            queue=self.queue,
            link=self.link,
            store=self.store,
            engine=self.engine,
            telemetry=self.telemetry,
            learned=learner,
            on_reply=operators.replied if operators else None,
            on_dispatched=operators.dispatched if operators else None,
        )
        self.admission = stages.admission
        self.worker = stages.worker
        self.delivery = stages.delivery
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def on(cls, store_path: Path | str = ":memory:", **kwargs: Any) -> Parts:
        return cls(store_path, **kwargs)

    async def start(self) -> Parts:
        await self.engine.start(n_ctx=2048)
        self.link.start(self.admission.offer)
        self._tasks = [
            asyncio.create_task(self.admission.run()),
            asyncio.create_task(self.worker.run()),
        ]
        return self

    async def crash(self) -> None:
        """Stop dead: no replies finished, nothing acked, nothing handed back."""
        self.admission.close()  # also ends contracts still compiling
        for task in self._tasks:
            task.cancel()
        self.delivery.cancel_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.delivery.wait_idle(within_s=1.0)
        self.link.disconnect()
        self.store.close()

    async def admit(self, message: Incoming) -> None:
        """Admit one message now (instead of through the link and the intake queue), and
        wait until it is queued or refused (its contract may compile in the background)."""
        await self.admission.admit(message)
        await preparations_done(self.admission)

    async def record(self, task_id: str) -> Any:
        return await self.store.get(task_id)


async def preparations_done(admission: Admission) -> None:
    """Until every task whose contract was compiling is queued or refused (after close():
    handed back). Read from admission's own set of them: the daemon never waits for them."""
    while admission._preparing:
        await asyncio.wait(set(admission._preparing))
