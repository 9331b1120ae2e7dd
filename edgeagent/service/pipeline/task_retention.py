"""How long finished tasks are kept: by age on the store's own clock, and by count.

Rows are pruned so the file stays small on an SD card. Age is measured on StoreClock,
never on a wall clock that a Pi without a real-time clock may not have set yet (or that
NTP moves years forward): a row lives at least max_age of service time, never less.
Accepted rows are never pruned: they are tasks still owed an answer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from edgeagent.service.pipeline.task_records import TaskState
from edgeagent.service.system.sqlite import write_transaction


class StoreClock:
    """Seconds that only move forward and only while the daemon runs.

    It starts at the newest timestamp in the file and adds time.monotonic() from
    there: a wall clock set years forward by NTP (or not yet set) cannot make a row
    look old. Rows therefore live at least max_age of service time, never less.
    """

    def __init__(self, start: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._start = start
        self._monotonic = monotonic
        self._opened = monotonic()

    def now(self) -> float:
        return self._start + (self._monotonic() - self._opened)


def newest_timestamp(db: sqlite3.Connection) -> float:
    """Where the store clock starts: the newest time the file holds (0 when empty)."""
    row = db.execute(
        "SELECT MAX(t) FROM (SELECT MAX(updated_at) AS t FROM tasks "
        "UNION ALL SELECT MAX(at) FROM deaths)"
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def prune_finished(db: sqlite3.Connection, *, now: float, max_age_s: float, max_rows: int) -> int:
    """Forget finished tasks older than max_age (store clock) and beyond max_rows."""
    cutoff = now - max_age_s
    with write_transaction(db):
        removed = db.execute(
            "DELETE FROM tasks WHERE updated_at < ? AND state != ?",
            (cutoff, TaskState.ACCEPTED),
        ).rowcount
        removed += db.execute(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state != ? "
            "ORDER BY updated_at DESC LIMIT -1 OFFSET ?)",
            (TaskState.ACCEPTED, max_rows),
        ).rowcount
    return removed
