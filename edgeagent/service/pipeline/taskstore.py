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

The rows' types are in task_records.py, the tables and their migrations in
task_schema.py, the store's clock and pruning in task_retention.py; this module holds
the queries.

This class is synchronous and raises sqlite3.Error; `AsyncTaskStore` runs it on its
own thread and turns failures into a degraded mode. `open_task_store` handles a file
that cannot be used at start: one it cannot read is moved aside, an unwritable directory
gives an in-memory store.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import structlog

from edgeagent.service.pipeline.task_records import Confirmation, Outcome, TaskRecord, TaskState
from edgeagent.service.pipeline.task_retention import (
    StoreClock,
    newest_timestamp,
    prune_finished,
)
from edgeagent.service.pipeline.task_schema import migrate
from edgeagent.service.system.sqlite import write_transaction

log = structlog.get_logger("edgeagent.service.pipeline.taskstore")

# Process deaths during a run kept for the crash budget (the newest ones).
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
            migrate(self._db)
            self.clock = StoreClock(newest_timestamp(self._db))
            self._deaths = self._count_death()
        except BaseException:
            self._db.close()
            raise
        self.max_age_s = max_age_s
        self.max_rows = max_rows

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
        return prune_finished(
            self._db, now=self.clock.now(), max_age_s=self.max_age_s, max_rows=self.max_rows
        )

    def count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return int(row[0])
