"""Task store files as earlier versions of the daemon left them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def write_v3_store(path: Path, *, updated_at: object = 1.7e9) -> None:
    """A schema-3 store (before `running`) that passes quick_check, with one accepted
    task whose `updated_at` is the value given (SQLite keeps a string as a string)."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL,"
        " reply TEXT, accepted_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " replayable INTEGER NOT NULL DEFAULT 1, reply_state TEXT, action_topic TEXT,"
        " action TEXT, action_state TEXT, runs INTEGER NOT NULL DEFAULT 0);"
        " PRAGMA user_version=3;"
    )
    db.execute(
        "INSERT INTO tasks (id, fingerprint, state, accepted_at, updated_at)"
        " VALUES ('t1', 'fp', 'accepted', 1.7e9, ?)",
        (updated_at,),
    )
    db.commit()
    db.close()
