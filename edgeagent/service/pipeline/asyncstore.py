"""The task store as the service uses it: off the event loop, bounded in time, never fatal.

Every call runs on one dedicated thread (SQLite with synchronous=FULL fsyncs on each
commit, which must not stall the event loop) and has a timeout. A failing store
(disk full, I/O error, read-only SD card, a file corrupted under us) does not stop
the daemon: the call's result is "nothing known", the store is marked degraded for
the rest of the process (heartbeat and STATUS say so, replies carry
`"exactly_once": false`), and the tasks keep being answered.

At start, `open_task_store` moves a file it cannot open aside (corrupt, or holding what
it cannot read; kept for inspection) and starts a fresh one; a state directory that
cannot be written gives an in-memory store, degraded: answer-once then holds within
this process only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from edgeagent.service.pipeline.task_records import Confirmation, Outcome, TaskRecord
from edgeagent.service.pipeline.taskstore import TaskStore, is_content_error

log = structlog.get_logger("edgeagent.service.pipeline.asyncstore")
T = TypeVar("T")

STORE_CALL_TIMEOUT_S = 10.0  # an SD card that takes longer is failing
MEMORY = ":memory:"


class SyncStore(Protocol):
    """The synchronous store (TaskStore; a failing stand-in in tests)."""

    def get(self, task_id: str) -> TaskRecord | None: ...
    def accept(self, task_id: str, fingerprint: str) -> None: ...
    def start_run(self, task_id: str) -> None: ...
    def finish(self, task_id: str, fingerprint: str, outcome: Outcome) -> None: ...
    def mark_reply(self, task_id: str, state: Confirmation) -> None: ...
    def mark_action(self, task_id: str, state: Confirmation) -> None: ...
    def forget(self, task_id: str) -> None: ...
    def prune(self) -> int: ...
    def count(self) -> int: ...
    def close(self) -> None: ...
    def death_ages(self) -> list[float]: ...


def open_task_store(path: Path, *, max_age_s: float, max_rows: int) -> tuple[TaskStore, str | None]:
    """The store at `path`, and why it is degraded (None when it is not).

    Never raises: a daemon that exits here is restarted by systemd into the same error.
    A file that cannot be reached (permissions, a read-only or full SD card, I/O errors)
    gives an in-memory store; any other failure to open it (corrupt pages, a schema or
    values it cannot read: a ValueError as much as an SQLite error) is the file's
    content, so it is moved aside and a fresh one started.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return TaskStore(path, max_age_s=max_age_s, max_rows=max_rows), None
    except Exception as exc:  # every failure has an answer: see above
        if not is_content_error(exc):
            return _in_memory(path, max_age_s, max_rows, exc)
        error = exc
    kept = _move_aside(path)
    if kept is None:
        return _in_memory(path, max_age_s, max_rows, error)
    log.error(
        "task store was unreadable; moved it aside and started a fresh one",
        path=str(path),
        kept=str(kept),
        error=f"{type(error).__name__}: {error}",
    )
    try:
        return TaskStore(path, max_age_s=max_age_s, max_rows=max_rows), None
    except Exception as again:  # a fresh file failing: the directory's fault
        return _in_memory(path, max_age_s, max_rows, again)


def _in_memory(
    path: Path, max_age_s: float, max_rows: int, exc: BaseException
) -> tuple[TaskStore, str]:
    reason = f"cannot use {path}: {exc}"
    log.error(
        "task store unusable; keeping tasks in memory, exactly-once holds until restart only",
        path=str(path),
        error=f"{type(exc).__name__}: {exc}",
    )
    return TaskStore(MEMORY, max_age_s=max_age_s, max_rows=max_rows), reason


def _move_aside(path: Path) -> Path | None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        for suffix in ("-wal", "-shm"):  # SQLite's side files belong to the bad file
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(kept.with_name(kept.name + suffix))
        path.rename(kept)
    except OSError as exc:
        log.error("cannot move the corrupt task store aside", path=str(path), error=str(exc))  # noqa: TRY400 - the OS error is the whole story
        return None
    return kept


class AsyncTaskStore:
    """TaskStore calls on one thread, each with a timeout; failures degrade, never raise."""

    def __init__(
        self,
        store: SyncStore,
        *,
        degraded: str | None = None,
        timeout_s: float = STORE_CALL_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeagent-store")
        self.degraded: str | None = degraded  # why exactly-once is not guaranteed
        self.failures = 0
        self._stuck = False

    @classmethod
    def open(cls, path: Path, *, max_age_s: float, max_rows: int) -> AsyncTaskStore:
        store, degraded = open_task_store(path, max_age_s=max_age_s, max_rows=max_rows)
        return cls(store, degraded=degraded)

    async def _call(self, op: str, fn: Callable[[], T], fallback: T) -> T:
        if self._stuck:
            return fallback  # its thread still hangs in an earlier call: do not queue behind it
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the call completes, and shutdown would wait on this loop.
            async with asyncio.timeout(self._timeout_s):
                return await loop.run_in_executor(self._thread, fn)
        except TimeoutError:
            self._stuck = True
            self._fail(op, f"no answer within {self._timeout_s:g} s")
        except sqlite3.Error as exc:
            self._fail(op, f"{getattr(exc, 'sqlite_errorname', 'sqlite')}: {exc}")
        except Exception as exc:  # a bug in the store must not end the daemon either
            log.exception("task store call crashed", op=op)
            self._fail(op, f"{type(exc).__name__}: {exc}")
        return fallback

    def _fail(self, op: str, error: str) -> None:
        self.failures += 1
        if self.degraded is None:
            self.degraded = f"{op}: {error}"
            log.error(
                "task store failed; answering on, exactly-once is not guaranteed until restart",
                op=op,
                error=error,
            )
        else:  # degraded already (heartbeat and STATUS say so): no warning per task
            log.debug("task store failed again", op=op, error=error, failures=self.failures)

    async def call(self, op: str, fn: Callable[[], T], fallback: T) -> T:
        """Another table's call in the same file (service/holds/holdstore.py): on this
        store's one thread, with its timeout; a failure degrades the store and gives
        `fallback`, like every call here."""
        return await self._call(op, fn, fallback)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self._call("get", lambda: self._store.get(task_id), None)

    async def accept(self, task_id: str, fingerprint: str) -> None:
        await self._call("accept", lambda: self._store.accept(task_id, fingerprint), None)

    async def start_run(self, task_id: str) -> None:
        await self._call("start_run", lambda: self._store.start_run(task_id), None)

    async def finish(self, task_id: str, fingerprint: str, outcome: Outcome) -> None:
        await self._call("finish", lambda: self._store.finish(task_id, fingerprint, outcome), None)

    async def mark_reply(self, task_id: str, state: Confirmation) -> None:
        await self._call("mark_reply", lambda: self._store.mark_reply(task_id, state), None)

    async def mark_action(self, task_id: str, state: Confirmation) -> None:
        await self._call("mark_action", lambda: self._store.mark_action(task_id, state), None)

    async def forget(self, task_id: str) -> None:
        await self._call("forget", lambda: self._store.forget(task_id), None)

    async def prune(self) -> tuple[int, int]:
        """(rows removed, rows left)."""
        return await self._call("prune", lambda: (self._store.prune(), self._store.count()), (0, 0))

    async def count(self) -> int:
        """Rows in the store (for the metrics); 0 when the store cannot tell."""
        return await self._call("count", self._store.count, 0)

    def death_ages(self) -> list[float]:
        """Seconds since each death of the process during a run, youngest first (read at
        open, no call to the store's thread); none when the store cannot tell."""
        try:
            return self._store.death_ages()
        except Exception:  # the crash budget is a safeguard, never a reason to fail a task
            log.exception("task store cannot tell its deaths")
            return []

    async def keep_pruned(self, every_s: float) -> None:
        """Prune now and then every `every_s` seconds: bounded on a daemon that runs for months."""
        while True:
            removed, left = await self.prune()
            log.debug("journal pruned", removed=removed, rows=left)
            await asyncio.sleep(every_s)

    def close(self) -> None:
        """Blocking but bounded: waits for the store thread's last call, then closes."""
        future = self._thread.submit(self._store.close)
        try:
            future.result(self._timeout_s)
        except Exception as exc:  # closing a broken store must not fail the shutdown
            log.warning("closing the task store failed", error=str(exc))
        self._thread.shutdown(wait=False, cancel_futures=True)
