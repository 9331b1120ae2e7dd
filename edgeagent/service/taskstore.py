"""Durable task journal (SQLite, WAL): what was accepted, what was answered.

It is what makes redelivery harmless: a task id seen again is answered from here
instead of running the model twice. States of a row:

    accepted -> finished (reply stored) -> replied (the broker confirmed the reply)

A task found `accepted` after a restart was interrupted (crash, SIGKILL): it runs
again. Rows are pruned by age and count so the file stays small on an SD card.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id          TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    reply       TEXT,
    accepted_at REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_updated ON tasks(updated_at);
"""


class TaskState(StrEnum):
    ACCEPTED = "accepted"
    FINISHED = "finished"
    REPLIED = "replied"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    fingerprint: str
    state: TaskState
    reply: dict[str, Any] | None


class TaskStore:
    def __init__(self, path: Path, *, max_age_s: float, max_rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: owned by the event-loop thread, but created before
        # the loop runs; access is never concurrent.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses at most the last transactions on power loss, never
        # corrupts; FULL would fsync every task on an SD card.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.max_age_s = max_age_s
        self.max_rows = max_rows

    def close(self) -> None:
        self._db.close()

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute(
            "SELECT id, fingerprint, state, reply FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        if row is None:
            return None
        reply = json.loads(row[3]) if row[3] is not None else None
        return TaskRecord(row[0], row[1], TaskState(row[2]), reply)

    def accept(self, task_id: str, fingerprint: str) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO tasks (id, fingerprint, state, accepted_at, updated_at) "
            "VALUES (?,?,?,?,?) ON CONFLICT(id) DO UPDATE "
            "SET state = excluded.state, updated_at = excluded.updated_at",
            (task_id, fingerprint, TaskState.ACCEPTED, now, now),
        )

    def finish(self, task_id: str, reply: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE tasks SET state = ?, reply = ?, updated_at = ? WHERE id = ?",
            (TaskState.FINISHED, json.dumps(reply, ensure_ascii=False), time.time(), task_id),
        )

    def mark_replied(self, task_id: str) -> None:
        self._db.execute(
            "UPDATE tasks SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
            (TaskState.REPLIED, time.time(), task_id, TaskState.FINISHED),
        )

    def forget(self, task_id: str) -> None:
        """Drop a task that was handed back unanswered (it may come again)."""
        self._db.execute(
            "DELETE FROM tasks WHERE id = ? AND state = ?", (task_id, TaskState.ACCEPTED)
        )

    def prune(self) -> int:
        cutoff = time.time() - self.max_age_s
        removed = self._db.execute(
            "DELETE FROM tasks WHERE updated_at < ? AND state != ?", (cutoff, TaskState.ACCEPTED)
        ).rowcount
        removed += self._db.execute(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state != ? "
            "ORDER BY updated_at DESC LIMIT -1 OFFSET ?)",
            (TaskState.ACCEPTED, self.max_rows),
        ).rowcount
        return removed

    def count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return int(row[0])
