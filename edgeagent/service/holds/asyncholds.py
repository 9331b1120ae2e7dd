"""The holds table as the desk uses it: every call on the task store's thread.

`AsyncTaskStore.call` runs each on that one thread with its timeout; a failure degrades
the store (heartbeat, STATUS=, `"exactly_once": false`) and gives the call's fallback,
as for the task store's own calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from edgeagent.service.holds.holdstore import HoldStore
from edgeagent.service.holds.records import Draft, HoldRecord, HoldState, Resolved
from edgeagent.service.pipeline.task_records import Confirmation

log = structlog.get_logger("edgeagent.service.holds.asyncholds")
T = TypeVar("T")


class StoreThread(Protocol):
    """The part of AsyncTaskStore the holds use."""

    @property
    def degraded(self) -> str | None: ...
    async def call(self, op: str, fn: Callable[[], T], fallback: T) -> T: ...


def open_hold_store(path: Path | str) -> HoldStore:
    """The holds table in the task store's file (opened after it: a file it could not
    read is moved aside by then); in memory when the file cannot be used."""
    try:
        return HoldStore(path)
    except Exception as exc:  # the task store is degraded for the same reason, or will be
        log.error("holds table unusable; keeping holds in memory", path=str(path), error=str(exc))  # noqa: TRY400 - the reason is the message
        return HoldStore(":memory:")


class AsyncHoldStore:
    def __init__(self, store: HoldStore, thread: StoreThread) -> None:
        self._store = store
        self._thread = thread

    @property
    def degraded(self) -> bool:
        return self._thread.degraded is not None

    async def get(self, task_id: str) -> HoldRecord | None:
        return await self._thread.call("hold get", lambda: self._store.get(task_id), None)

    async def by_command(self, digest: str) -> HoldRecord | None:
        return await self._thread.call(
            "hold by_command", lambda: self._store.by_command(digest), None
        )

    async def pending(self) -> list[HoldRecord]:
        return await self._thread.call("hold pending", self._store.pending, [])

    async def owing(self) -> list[HoldRecord]:
        return await self._thread.call("hold owing", self._store.owing, [])

    async def prepare(self, hold: Draft) -> bool:
        def prepare() -> bool:
            self._store.prepare(hold)
            return True

        return await self._thread.call("hold prepare", prepare, fallback=False)

    async def promote(self, task_id: str) -> HoldRecord | None:
        return await self._thread.call("hold promote", lambda: self._store.promote(task_id), None)

    async def resolve(self, task_id: str, resolved: Resolved) -> str | bool:
        """The input the resolution dropped; False when the hold was not pending, True
        when the store failed (degraded: the resolution goes on in memory)."""

        def resolve() -> str | bool:
            text = self._store.resolve(task_id, resolved)
            return False if text is None else text

        return await self._thread.call("hold resolve", resolve, fallback=True)

    async def mark(self, task_id: str, what: str, state: Confirmation, *, hold: HoldState) -> None:
        await self._thread.call(
            "hold mark", lambda: self._store.mark(task_id, what, state, hold=hold), None
        )

    async def prune(self, max_rows: int) -> int:
        return await self._thread.call("hold prune", lambda: self._store.prune(max_rows), 0)

    async def close(self) -> None:
        await self._thread.call("hold close", self._store.close, None)
