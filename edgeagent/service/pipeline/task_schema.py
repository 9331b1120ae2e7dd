"""The task store's tables, and how a file of an older version is brought up to date.

The version lives in SQLite's user_version. A migration runs in one write transaction
(service/system/sqlite.py): a crash half-way leaves the old version, which the next
start migrates again. Columns are only ever added, so an older daemon's rows stay
readable.
"""

from __future__ import annotations

import json
import sqlite3

from edgeagent.errors import ErrorCode
from edgeagent.service.pipeline.task_records import Confirmation, TaskState
from edgeagent.service.system.sqlite import write_transaction

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


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or upgrade an older file's, up to SCHEMA_VERSION."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    old = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
    ).fetchone()
    with write_transaction(db):
        if old is not None and version < 2:
            _upgrade_v1(db)
        elif old is not None:
            _add_columns(db)
        # One statement at a time: executescript() would commit the transaction.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


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
