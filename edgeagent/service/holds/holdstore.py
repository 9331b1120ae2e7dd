"""The holds table: SQLite, in the task store's file, used on the task store's thread.

Its own connection to `journal.sqlite3` (WAL, synchronous=FULL like the task store), its
own schema version (the `hold_schema` table: the file's user_version is the task store's).
Every call runs on AsyncTaskStore's one thread (`AsyncHoldStore`), so the two connections
never write at once, and a failing call degrades the store like any other.

A hold is written `opening` before its task's reply is stored, and made `pending` after:
opening the store settles what a crash left in between (the task's reply stored: the
hold stands, its notice still to publish; not stored: the task runs again and holds anew).
A resolution drops the task's input (`text`, up to a whole task payload): only the
learner needed it, and it was called. Resolved holds whose publishes are all confirmed
are pruned once their task is (the task store forgets it), and beyond `max_rows`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from edgeagent.protocol.reply import ReplyRoute
from edgeagent.service.holds.records import Decision, Draft, HoldRecord, HoldState, Resolved
from edgeagent.service.pipeline.task_records import Confirmation
from edgeagent.service.system.sqlite import write_transaction

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS hold_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    task_id        TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    action         TEXT NOT NULL,
    args           TEXT NOT NULL,     -- JSON: the model's arguments
    confidence     REAL,
    action_topic   TEXT NOT NULL,
    notice         TEXT NOT NULL,     -- the retained payload on held/<task_id>
    reply          TEXT NOT NULL,     -- the task's reply
    routes         TEXT NOT NULL,     -- JSON [[topic, correlation data hex or null], ...]
    text           TEXT NOT NULL,     -- the task's input, '' once resolved
    held_at        REAL NOT NULL,     -- wall clock
    expires_at     REAL NOT NULL,     -- wall clock
    notice_state   TEXT NOT NULL,
    decision       TEXT,
    by_name        TEXT,
    resolved_at    REAL,
    final_args     TEXT,              -- JSON
    command        TEXT,
    action_state   TEXT,
    followup_state TEXT
);
CREATE INDEX IF NOT EXISTS holds_state ON holds(state, seq);
CREATE INDEX IF NOT EXISTS holds_command ON holds(command);
"""
_COLUMNS = (
    "task_id, state, seq, action, args, confidence, action_topic, notice, reply, routes, text, "
    "held_at, expires_at, notice_state, decision, by_name, resolved_at, final_args, command, "
    "action_state, followup_state"
)
_OWES = "(notice_state = 'pending' OR action_state IS 'pending' OR followup_state IS 'pending')"
_MARKABLE = frozenset({"notice_state", "action_state", "followup_state"})


class HoldStore:
    def __init__(self, path: Path | str) -> None:
        """`path` ":memory:" for a store that lasts as long as the process. Raises
        sqlite3.Error (or OSError) when the file cannot be used."""
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # as the task store, for the same reason
            self._migrate()
            self._settle_openings()
        except BaseException:
            self._db.close()
            raise

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return write_transaction(self._db)

    def _migrate(self) -> None:
        with self._transaction():
            known = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hold_schema'"
            ).fetchone()
            row = self._db.execute("SELECT version FROM hold_schema").fetchone() if known else None
            version = int(row[0]) if row else 0
            if version >= SCHEMA_VERSION:
                return
            # A later version adds its columns here (ALTER TABLE), as task_schema.py does.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("DELETE FROM hold_schema")
            self._db.execute("INSERT INTO hold_schema (version) VALUES (?)", (SCHEMA_VERSION,))

    def _has_tasks(self) -> bool:
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
        ).fetchone()
        return found is not None

    def _settle_openings(self) -> None:
        """Holds a crash left `opening`: pending if their task's reply was stored."""
        with self._transaction():
            if self._has_tasks():
                self._db.execute(
                    "UPDATE holds SET state = ? WHERE state = ? AND task_id IN "
                    "(SELECT id FROM tasks WHERE state = 'finished')",
                    (HoldState.PENDING, HoldState.OPENING),
                )
            self._db.execute("DELETE FROM holds WHERE state = ?", (HoldState.OPENING,))

    def close(self) -> None:
        self._db.close()

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: str) -> HoldRecord | None:
        return self._one("WHERE task_id = ?", (task_id,))

    def by_command(self, digest: str) -> HoldRecord | None:
        return self._one("WHERE command = ?", (digest,))

    def pending(self) -> list[HoldRecord]:
        """Without their input (`text` ''): the desk keeps them in memory."""
        return self._all("WHERE state = ? ORDER BY seq", (HoldState.PENDING,), text=False)

    def owing(self) -> list[HoldRecord]:
        """Holds with a publish not confirmed yet (a pending one's notice included)."""
        where = f"WHERE state != ? AND {_OWES} ORDER BY seq"
        return self._all(where, (HoldState.OPENING,), text=False)

    def _one(self, where: str, params: tuple[Any, ...]) -> HoldRecord | None:
        found = self._all(f"{where} LIMIT 1", params)
        return found[0] if found else None

    def _all(self, where: str, params: tuple[Any, ...], *, text: bool = True) -> list[HoldRecord]:
        columns = _COLUMNS if text else _COLUMNS.replace(" text,", " '' AS text,")
        rows = self._db.execute(f"SELECT {columns} FROM holds {where}", params).fetchall()  # noqa: S608 - constants
        return [_record(row) for row in rows]

    # -- writes ------------------------------------------------------------------------

    def prepare(self, hold: Draft) -> None:
        """Write a hold `opening`. Over an earlier hold of the id only when that one is
        `opening` (a run the process died in) or resolved with nothing left to publish
        (its task was forgotten and sent again); a pending one stays as it is."""
        routes = json.dumps(
            [
                [r.topic, r.correlation_data.hex() if r.correlation_data else None]
                for r in hold.routes
            ]
        )
        self._db.execute(
            f"INSERT INTO holds ({_COLUMNS}) VALUES "  # noqa: S608 - constants
            "(?,?,(SELECT COALESCE(MAX(seq), 0) + 1 FROM holds),?,?,?,?,?,?,?,?,?,?,?,"
            "NULL,NULL,NULL,NULL,NULL,NULL,NULL) "
            "ON CONFLICT(task_id) DO UPDATE SET state = excluded.state, seq = excluded.seq, "
            "action = excluded.action, args = excluded.args, confidence = excluded.confidence, "
            "action_topic = excluded.action_topic, notice = excluded.notice, "
            "reply = excluded.reply, routes = excluded.routes, text = excluded.text, "
            "held_at = excluded.held_at, expires_at = excluded.expires_at, "
            "notice_state = excluded.notice_state, decision = NULL, by_name = NULL, "
            "resolved_at = NULL, final_args = NULL, command = NULL, action_state = NULL, "
            f"followup_state = NULL WHERE holds.state = ? OR (holds.state = ? AND NOT {_OWES})",
            (
                hold.task_id,
                HoldState.OPENING,
                hold.action,
                json.dumps(hold.args),
                hold.confidence,
                hold.action_topic,
                hold.notice,
                hold.reply,
                routes,
                hold.text,
                hold.held_at,
                hold.expires_at,
                Confirmation.PENDING,
                HoldState.OPENING,
                HoldState.RESOLVED,
            ),
        )

    def promote(self, task_id: str) -> HoldRecord | None:
        """`opening` -> `pending`, once the task's reply is stored; the hold, or None."""
        changed = self._db.execute(
            "UPDATE holds SET state = ? WHERE task_id = ? AND state = ?",
            (HoldState.PENDING, task_id, HoldState.OPENING),
        ).rowcount
        return self.get(task_id) if changed else None

    def resolve(self, task_id: str, resolved: Resolved) -> str | None:
        """Commit a decision on a pending hold: its action (when it dispatches), follow-up
        and the notice's clearing are owed to the broker from now on. The task's input it
        drops, or None when the hold was not pending."""
        final = None if resolved.final_args is None else json.dumps(resolved.final_args)
        dispatch = Confirmation.PENDING if resolved.decision.dispatches else None
        with self._transaction():
            row = self._db.execute(
                "SELECT text FROM holds WHERE task_id = ? AND state = ?",
                (task_id, HoldState.PENDING),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE holds SET state = ?, decision = ?, by_name = ?, resolved_at = ?, "
                "final_args = ?, command = ?, action_state = ?, followup_state = ?, "
                "notice_state = ?, text = '' WHERE task_id = ?",
                (
                    HoldState.RESOLVED,
                    resolved.decision,
                    resolved.by,
                    resolved.at,
                    final,
                    resolved.command,
                    dispatch,
                    Confirmation.PENDING,
                    Confirmation.PENDING,
                    task_id,
                ),
            )
        return str(row[0])

    def mark(self, task_id: str, what: str, state: Confirmation, *, hold: HoldState) -> None:
        """Record the broker's answer to one of a hold's publishes, while the hold is in
        state `hold` (a pending hold's notice publication must not be taken for the
        clearing of the notice its resolution meanwhile made owed)."""
        assert what in _MARKABLE, what
        self._db.execute(
            f"UPDATE holds SET {what} = ? WHERE task_id = ? AND state = ?",  # noqa: S608 - a checked column name
            (state, task_id, hold),
        )

    def prune(self, max_rows: int) -> int:
        """Forget resolved holds with nothing left to publish whose task the task store
        forgot, and all but the newest `max_rows` of them."""
        settled = f"state = '{HoldState.RESOLVED}' AND NOT {_OWES}"
        with self._transaction():
            removed = 0
            if self._has_tasks():
                removed += self._db.execute(
                    f"DELETE FROM holds WHERE {settled} AND task_id NOT IN (SELECT id FROM tasks)"  # noqa: S608 - constants
                ).rowcount
            removed += self._db.execute(
                f"DELETE FROM holds WHERE task_id IN (SELECT task_id FROM holds WHERE {settled} "  # noqa: S608 - constants
                "ORDER BY resolved_at DESC LIMIT -1 OFFSET ?)",
                (max_rows,),
            ).rowcount
        return removed


def _record(row: sqlite3.Row) -> HoldRecord:
    hold = Draft(
        task_id=row["task_id"],
        action=row["action"],
        args=json.loads(row["args"]),
        confidence=row["confidence"],
        action_topic=row["action_topic"],
        notice=row["notice"],
        reply=row["reply"],
        routes=tuple(
            ReplyRoute(topic, bytes.fromhex(data) if data else None)
            for topic, data in json.loads(row["routes"])
        ),
        text=row["text"],
        held_at=row["held_at"],
        expires_at=row["expires_at"],
    )
    resolved = None
    if row["decision"] is not None:
        final = row["final_args"]
        resolved = Resolved(
            Decision(row["decision"]),
            row["by_name"],
            row["resolved_at"],
            None if final is None else json.loads(final),
            row["command"],
        )
    action_state, followup_state = row["action_state"], row["followup_state"]
    return HoldRecord(
        hold,
        HoldState(row["state"]),
        int(row["seq"]),
        Confirmation(row["notice_state"]),
        resolved,
        Confirmation(action_state) if action_state else None,
        Confirmation(followup_state) if followup_state else None,
    )
