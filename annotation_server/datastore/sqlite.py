"""The one way the server opens its SQLite files (datastore index, federated queue, score cache, registry).

WAL lets readers (the API, a training job, an NVFlare site client) run while one writer commits;
`synchronous=FULL` makes a commit survive a power cut (NORMAL where losing the last commit is harmless,
as for recomputable scores). Writes go through `immediate_transaction`, which takes the write lock at
BEGIN so two writers queue up instead of failing half-way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal


def open_database(
    path: Path, schema: str, synchronous: Literal["FULL", "NORMAL"] = "FULL", shared: bool = True
) -> sqlite3.Connection:
    """A connection in autocommit mode with the schema applied; `shared` allows use from several threads
    (callers serialise with their own lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=not shared, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(schema)
    return conn


@contextmanager
def immediate_transaction(
    conn: sqlite3.Connection, lock: threading.Lock | threading.RLock | None = None
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (including KeyboardInterrupt, and a failed COMMIT:
    a connection left inside a transaction would refuse every later BEGIN)."""
    if lock is not None:
        lock.acquire()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        if lock is not None:
            lock.release()
