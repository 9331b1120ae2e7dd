"""Durable task store (SQLite, WAL): what was accepted, what it answered, what was confirmed.

It is what makes redelivery harmless: a task id seen again is answered from here
instead of running the model twice, and its action is dispatched once. A row:

    accepted -> finished (reply and action message stored)
                 reply_state:  pending -> confirmed | refused   (the broker's PUBACK)
                 action_state: pending -> confirmed | refused   (dispatch actions only)

A task found `accepted` after a restart was interrupted (crash, SIGKILL): it runs
again — unless it was interrupted while running too often. `runs` counts the runs of an
`accepted` task, committed before each one starts, so a task that kills the process
(a llama.cpp crash, an OOM kill, a wedge the watchdog ends) is seen as such after the
restart and answered instead of run again (see Admission; `[queue] max_task_aborts`).
`running` marks a run started and not ended: found set at open, the process died during
a run, and the store records that death (`death_ages`) for Admission's crash budget,
which holds restarts within systemd's start limit however many tasks kill the process.
Rows are pruned by age and count so the file stays small on an SD card; age is
measured on the store's own clock (see `StoreClock`), never on a wall clock that a Pi
without a real-time clock may not have set yet.

This class is synchronous and raises sqlite3.Error; `AsyncTaskStore` runs it on its
own thread and turns failures into a degraded mode. `open_task_store` handles a file
that cannot be used at start: one it cannot read is moved aside, an unwritable directory
gives an in-memory store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from edgeagent.errors import ErrorCode
from edgeagent.service.system.sqlite import write_transaction

log = structlog.get_logger("edgeagent.service.pipeline.taskstore")

SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id           TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL,
    reply        TEXT,
    accepted_at  REAL NOT NULL,   -- wall clock, for people reading the file
    updated_at   REAL NOT NULL,   -- store clock (StoreClock), for pruning
    replayable   INTEGER NOT NULL DEFAULT 1,
    reply_state  TEXT,
    action_topic TEXT,
    action       TEXT,
    action_state TEXT,
    runs         INTEGER NOT NULL DEFAULT 0, -- runs started while accepted (poison tasks)
    running      INTEGER NOT NULL DEFAULT 0  -- a run started and not ended yet
);
CREATE INDEX IF NOT EXISTS tasks_updated ON tasks(updated_at);
-- Process deaths during a run (store clock), newest DEATHS_KEPT: the crash budget.
CREATE TABLE IF NOT EXISTS deaths (at REAL NOT NULL);
"""
DEATHS_KEPT = 16
_COLUMNS = (
    "id, fingerprint, state, reply, replayable, reply_state, action_topic, action, action_state, "
    "runs"
)
# SQLite result codes (and their extended codes) that say the file cannot be reached or
# written, as opposed to what it holds: moving it aside would not help.
_UNREACHABLE = (
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_PERM",
    "SQLITE_AUTH",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_NOMEM",
)


class TaskState(StrEnum):
    ACCEPTED = "accepted"
    FINISHED = "finished"


class Confirmation(StrEnum):
    PENDING = "pending"  # published (or about to be), no PUBACK yet
    CONFIRMED = "confirmed"  # the broker took it
    REFUSED = "refused"  # the broker answered with a failure reason code


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished task publishes, stored before the first publish."""

    reply: str  # the reply payload, sent byte for byte again on a redelivery
    # A client's re-send of the id gets this reply. False for retryable errors and for
    # refusals before the model ran: a re-send runs the task again.
    replayable: bool = True
    action_topic: str | None = None  # a `dispatch = true` action's topic and payload
    action: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    fingerprint: str
    state: TaskState
    outcome: Outcome | None
    reply_state: Confirmation | None
    action_state: Confirmation | None  # None: nothing to dispatch
    # Runs started since it was accepted; while `accepted`, every one of them ended with
    # the process (the run that finishes it moves it to `finished`).
    runs: int = 0


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


def is_content_error(exc: BaseException) -> bool:
    """Whether opening failed on what the file holds (corrupt, not a database, a schema
    or values it cannot read), not on reaching it (OSError, I/O, permissions, locks)."""
    if isinstance(exc, OSError | MemoryError):
        return False
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        return not name.startswith(_UNREACHABLE)
    return True  # ValueError, TypeError...: a value the store cannot read


class TaskStore:
    def __init__(
        self, path: Path | str, *, max_age_s: float, max_rows: int, synchronous: str = "FULL"
    ) -> None:
        """`path` ":memory:" gives a store that lasts as long as the process.

        Raises sqlite3.Error (or OSError) when the file cannot be opened or is corrupt.
        """
        self.path = path
        # check_same_thread=False: used from AsyncTaskStore's one thread, but opened
        # before it; access is never concurrent.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit reaches the SD card before the broker is told anything;
            # NORMAL could lose the last transitions on a power cut and so run (and
            # dispatch) a task twice. Cost measured in docs/protocol.md.
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
            self._migrate()
            self.clock = StoreClock(self._newest_timestamp())
            self._deaths = self._count_death()
        except BaseException:
            self._db.close()
            raise
        self.max_age_s = max_age_s
        self.max_rows = max_rows

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            return
        old = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
        ).fetchone()
        with self._transaction():
            if old is not None and version < 2:
                _upgrade_v1(self._db)
            elif old is not None:
                _add_columns(self._db)
            # One statement at a time: executescript() would commit the transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _newest_timestamp(self) -> float:
        row = self._db.execute(
            "SELECT MAX(t) FROM (SELECT MAX(updated_at) AS t FROM tasks "
            "UNION ALL SELECT MAX(at) FROM deaths)"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else 0.0

    def _count_death(self) -> list[float]:
        """Record a death of the last process during a run (a run still marked running);
        the store-clock times of the deaths kept, newest first.

        Stamped now, at open: the store clock stood still while no process ran, so the
        death is at most this long ago in its time, and never longer ago than in real
        time (the budget counts it for at least as long as systemd's start limit does).
        """
        with self._transaction():
            died = self._db.execute("SELECT 1 FROM tasks WHERE running != 0 LIMIT 1").fetchone()
            if died is not None:
                self._db.execute("INSERT INTO deaths (at) VALUES (?)", (self.clock.now(),))
                self._db.execute("UPDATE tasks SET running = 0 WHERE running != 0")
            self._db.execute(
                "DELETE FROM deaths WHERE rowid NOT IN "
                "(SELECT rowid FROM deaths ORDER BY at DESC LIMIT ?)",
                (DEATHS_KEPT,),
            )
        rows = self._db.execute("SELECT at FROM deaths ORDER BY at DESC").fetchall()
        return [float(at) for (at,) in rows]

    def death_ages(self) -> list[float]:
        """Seconds of store time since each process death during a run, youngest first.
        No SQL (deaths only happen between processes): safe to call from any thread."""
        now = self.clock.now()
        return [now - at for at in self._deaths]

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return write_transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def get(self, task_id: str) -> TaskRecord | None:
        query = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"  # noqa: S608 - a constant column list
        row = self._db.execute(query, (task_id,)).fetchone()
        if row is None:
            return None
        (
            tid,
            fingerprint,
            state,
            reply,
            replayable,
            reply_state,
            topic,
            action,
            action_state,
            runs,
        ) = row
        outcome = Outcome(reply, bool(replayable), topic, action) if reply is not None else None
        return TaskRecord(
            tid,
            fingerprint,
            TaskState(state),
            outcome,
            Confirmation(reply_state) if reply_state else None,
            Confirmation(action_state) if action_state else None,
            int(runs),
        )

    def accept(self, task_id: str, fingerprint: str) -> None:
        """Record a task about to be queued; an existing row (a re-run) starts over.

        The run count survives only an `accepted` row of the same task: that is the
        task running again after the process died under it. A finished task accepted
        again (a client's re-send) starts from zero.
        """
        self._db.execute(
            "INSERT INTO tasks (id, fingerprint, state, accepted_at, updated_at) "
            "VALUES (?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
            "runs = CASE WHEN tasks.state = excluded.state "
            "AND tasks.fingerprint = excluded.fingerprint THEN tasks.runs ELSE 0 END, "
            "fingerprint = excluded.fingerprint, "
            "state = excluded.state, updated_at = excluded.updated_at, reply = NULL, "
            "replayable = 1, reply_state = NULL, action_topic = NULL, action = NULL, "
            "action_state = NULL",
            (task_id, fingerprint, TaskState.ACCEPTED, time.time(), self.clock.now()),
        )

    def start_run(self, task_id: str) -> None:
        """Count a run of an accepted task, before it starts (committed: it must outlive
        the process if the run ends it)."""
        self._db.execute(
            "UPDATE tasks SET runs = runs + 1, running = 1, updated_at = ? "
            "WHERE id = ? AND state = ?",
            (self.clock.now(), task_id, TaskState.ACCEPTED),
        )

    def finish(self, task_id: str, fingerprint: str, outcome: Outcome) -> None:
        """Store what the task publishes, before the first publish (also for a task that
        was refused before running, so a broker redelivery gets the same answer)."""
        self._db.execute(
            "INSERT INTO tasks (id, fingerprint, state, reply, replayable, reply_state, "
            "action_topic, action, action_state, accepted_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
            "state = excluded.state, reply = excluded.reply, replayable = excluded.replayable, "
            "reply_state = excluded.reply_state, action_topic = excluded.action_topic, "
            "action = excluded.action, action_state = excluded.action_state, "
            "running = 0, updated_at = excluded.updated_at",
            (
                task_id,
                fingerprint,
                TaskState.FINISHED,
                outcome.reply,
                int(outcome.replayable),
                Confirmation.PENDING,
                outcome.action_topic,
                outcome.action,
                Confirmation.PENDING if outcome.action is not None else None,
                time.time(),
                self.clock.now(),
            ),
        )

    def mark_reply(self, task_id: str, state: Confirmation) -> None:
        self._db.execute(
            "UPDATE tasks SET reply_state = ?, updated_at = ? WHERE id = ? AND state = ?",
            (state, self.clock.now(), task_id, TaskState.FINISHED),
        )

    def mark_action(self, task_id: str, state: Confirmation) -> None:
        self._db.execute(
            "UPDATE tasks SET action_state = ?, updated_at = ? "
            "WHERE id = ? AND state = ? AND action IS NOT NULL",
            (state, self.clock.now(), task_id, TaskState.FINISHED),
        )

    def forget(self, task_id: str) -> None:
        """Drop a task that was handed back unanswered (it may come again)."""
        self._db.execute(
            "DELETE FROM tasks WHERE id = ? AND state = ?", (task_id, TaskState.ACCEPTED)
        )

    def prune(self) -> int:
        """Forget finished tasks older than max_age (store clock) and beyond max_rows."""
        cutoff = self.clock.now() - self.max_age_s
        with self._transaction():
            removed = self._db.execute(
                "DELETE FROM tasks WHERE updated_at < ? AND state != ?",
                (cutoff, TaskState.ACCEPTED),
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


def _add_columns(db: sqlite3.Connection) -> None:
    """Columns later schemas added (v2: replayable to action_state; v3: runs; v4: running)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    for column, kind in (
        ("replayable", "INTEGER NOT NULL DEFAULT 1"),
        ("reply_state", "TEXT"),
        ("action_topic", "TEXT"),
        ("action", "TEXT"),
        ("action_state", "TEXT"),
        ("runs", "INTEGER NOT NULL DEFAULT 0"),
        ("running", "INTEGER NOT NULL DEFAULT 0"),
    ):
        if column not in have:
            db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")


def _upgrade_v1(db: sqlite3.Connection) -> None:
    """The first schema had state accepted/finished/replied and no action columns."""
    _add_columns(db)
    db.execute(
        "UPDATE tasks SET state = ?, reply_state = ? WHERE state = 'replied'",
        (TaskState.FINISHED, Confirmation.CONFIRMED),
    )
    db.execute(
        "UPDATE tasks SET reply_state = ? WHERE state = ? AND reply_state IS NULL",
        (Confirmation.PENDING, TaskState.FINISHED),
    )
    rows = db.execute("SELECT id, reply FROM tasks WHERE reply IS NOT NULL").fetchall()
    for task_id, reply in rows:
        if not _replayable(reply):
            db.execute("UPDATE tasks SET replayable = 0 WHERE id = ?", (task_id,))


def _replayable(reply: str) -> bool:
    try:
        body = json.loads(reply)
        code = ErrorCode(body["error"]["code"]) if body.get("status") == "error" else None
    except (ValueError, KeyError, TypeError):
        return True
    return code is None or not code.retryable
