"""A daemon built from fakes, and its admission/worker/delivery run without the lifecycle.

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
from edgeagent.service.assembly import topics_for, wire
from edgeagent.service.daemon import Daemon
from edgeagent.service.pipeline.asyncstore import AsyncTaskStore
from edgeagent.service.pipeline.taskstore import TaskStore
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
    """One 'process': the task-handling parts of a daemon, running."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def on(cls, store_path: Path | str = ":memory:", **kwargs: Any) -> Parts:
        return cls(make_daemon(store_path, **kwargs))

    @property
    def link(self) -> FakeLink:
        assert isinstance(self.daemon.link, FakeLink)
        return self.daemon.link

    @property
    def engine(self) -> FakeEngine:
        assert isinstance(self.daemon.engine, FakeEngine)
        return self.daemon.engine

    @property
    def store(self) -> AsyncTaskStore:
        return self.daemon.store

    async def start(self) -> Parts:
        await self.daemon.engine.start(n_ctx=2048)
        self.link.start(self.daemon.admission.offer)
        self._tasks = [
            asyncio.create_task(self.daemon.admission.run()),
            asyncio.create_task(self.daemon.worker.run()),
        ]
        return self

    async def crash(self) -> None:
        """Stop dead: no replies finished, nothing acked, nothing handed back."""
        self.daemon.admission.close()  # also ends contracts still compiling
        for task in self._tasks:
            task.cancel()
        self.daemon.delivery.cancel_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.daemon.delivery.wait_idle(within_s=1.0)
        self.link.disconnect()
        self.store.close()

    async def admit(self, message: Incoming) -> None:
        """Admit one message now (instead of through the link and the intake queue), and
        wait until it is queued or refused (its contract may compile in the background)."""
        await self.daemon.admission.admit(message)
        await self.daemon.admission.settle()

    async def record(self, task_id: str) -> Any:
        return await self.store.get(task_id)
