"""The learned-examples store: one SQLite file beside the task journal, bounded, newest kept.

A row is one input an operator ruled on and the answer that was right for it: the
input text (at most what the operator was shown), the right action and arguments, the
decision (confirmed, edited, rejected), the model's own choice, who decided and when.
An input learned again replaces its older row (the newest ruling counts). At most
`max_rows` rows are kept: the oldest go first. Order is insertion order (the row id),
never a wall clock that a Pi without a real-time clock may not have set.

Synchronous: the daemon calls it from the learner's own thread (learner.py), the CLI
directly. WAL and a busy timeout let `edgeagent examples` read or clear the file while
the daemon writes it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEARNED_FILE = "learned.sqlite3"
BUSY_TIMEOUT_MS = 5000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS learned (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: newest is highest
    text         TEXT NOT NULL UNIQUE,
    action       TEXT NOT NULL,  -- the right answer
    args         TEXT NOT NULL,  -- JSON object
    decision     TEXT NOT NULL,  -- confirmed | edited | rejected
    model_action TEXT NOT NULL,  -- what the model had answered
    model_args   TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    by           TEXT,
    at           REAL NOT NULL   -- unix time of the decision (for people reading it)
)
"""
_FIELDS = "text, action, args, decision, model_action, model_args, task_id, by, at"
_INSERT = f"INSERT INTO learned ({_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - constants
_SELECT = f"SELECT id, {_FIELDS} FROM learned ORDER BY id DESC LIMIT ?"  # noqa: S608 - constants


@dataclass(frozen=True, slots=True)
class LearnedExample:
    text: str
    action: str
    args: dict[str, Any]
    decision: str
    model_action: str
    model_args: dict[str, Any]
    task_id: str
    by: str | None
    at: float
    id: int = 0  # set by the store

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input": self.text,
            "action": self.action,
            "args": self.args,
            "decision": self.decision,
            "model": {"action": self.model_action, "args": self.model_args},
            "task_id": self.task_id,
            "by": self.by,
            "at": self.at,
        }


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


class LearnedStore:
    def __init__(self, path: Path | str, *, max_rows: int, read_only: bool = False) -> None:
        """Raises sqlite3.Error (or OSError) when the file cannot be opened.

        read_only: never creates nor writes the file (`edgeagent examples list|export`).
        """
        self.path = path
        self.max_rows = max_rows
        if read_only:
            uri = f"file:{Path(path).resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            # check_same_thread=False: opened on one thread, then used from the learner's.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if not read_only:
                self._db.execute("PRAGMA journal_mode=WAL")
                # A power cut may lose the last example: harmless, and no fsync per write.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def add(self, example: LearnedExample) -> None:
        """Keep `example` as the newest row (replacing one with the same text), then
        drop the oldest beyond max_rows."""
        with self._transaction():
            self._db.execute("DELETE FROM learned WHERE text = ?", (example.text,))
            self._db.execute(
                _INSERT,
                (
                    example.text,
                    example.action,
                    json.dumps(example.args, ensure_ascii=False),
                    example.decision,
                    example.model_action,
                    json.dumps(example.model_args, ensure_ascii=False),
                    example.task_id,
                    example.by,
                    example.at,
                ),
            )
            self._db.execute(
                "DELETE FROM learned WHERE id NOT IN "
                "(SELECT id FROM learned ORDER BY id DESC LIMIT ?)",
                (self.max_rows,),
            )

    def recent(self, limit: int | None = None) -> list[LearnedExample]:
        """The newest `limit` rows (default max_rows), newest first."""
        rows = self._db.execute(
            _SELECT,
            (self.max_rows if limit is None else limit,),
        ).fetchall()
        return [
            LearnedExample(
                id=row[0],
                text=row[1],
                action=row[2],
                args=_object(row[3]),
                decision=row[4],
                model_action=row[5],
                model_args=_object(row[6]),
                task_id=row[7],
                by=row[8],
                at=row[9],
            )
            for row in rows
        ]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM learned").fetchone()[0])

    def clear(self) -> int:
        """Forget every example; returns how many there were."""
        with self._transaction():
            cursor = self._db.execute("DELETE FROM learned")
        return cursor.rowcount

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock at once: a concurrent writer (the CLI, the
        # daemon) waits the busy timeout instead of failing half-way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
