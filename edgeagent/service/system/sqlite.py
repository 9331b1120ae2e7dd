"""The one way the daemon's SQLite files (task store, holds, learned examples) write."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """All of the block's writes or none. BEGIN IMMEDIATE takes the write lock at once: a
    concurrent writer (the CLI beside the daemon) waits its busy timeout there instead of
    failing half-way through the block."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
