"""What the PACS watcher knows about each series, in SQLite, so a restart never does a series twice.

One row per SeriesInstanceUID ever seen. Status:
- `baseline`: already in the PACS when the watcher first ran (left alone: the watcher is for new arrivals);
- `skipped`: new, but the app's rules exclude it (the reason is kept);
- `arriving`: new, its instances still coming in (a series is stored instance by instance): it waits until its
  instance count has stayed the same for the settle time, so a half-stored series is never segmented;
- `queued` / `running`: waiting for / being pre-annotated (a `running` row found at start was interrupted by
  a crash or a stop and is queued again: its label had not been committed, or the row would say `done`);
- `retry`: failed, tried again at `next_try_ts` (backoff doubles per attempt);
- `done`: a label version (and SEG) exists; never done again;
- `failed`: gave up after the maximum attempts; the last error is kept for the report.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

SeriesStatus = Literal["baseline", "skipped", "arriving", "queued", "running", "retry", "done", "failed"]
PENDING: tuple[SeriesStatus, ...] = ("arriving", "queued", "running", "retry")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_ts REAL NOT NULL DEFAULT 0,
    reason TEXT,
    error TEXT,
    label_version INTEGER,
    dicom_seg TEXT,
    instances INTEGER NOT NULL DEFAULT -1,
    changed_ts REAL NOT NULL DEFAULT 0,
    seen_ts REAL NOT NULL,
    done_ts REAL
);
CREATE INDEX IF NOT EXISTS series_status ON series(status, next_try_ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SeriesState(BaseModel):
    uid: str
    study_uid: str = ""
    status: SeriesStatus
    attempts: int = 0
    next_try_ts: float = 0.0
    reason: str | None = None
    error: str | None = None
    label_version: int | None = None
    dicom_seg: str | None = None
    instances: int = -1
    changed_ts: float = 0.0
    seen_ts: float
    done_ts: float | None = None


class WatchState:
    """The watcher's SQLite file (WAL; one connection guarded by a lock: a few writes per series)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ----------------------------------------------------------------------------------------- meta
    def baseline_taken(self) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM meta WHERE key = 'baseline_ts'").fetchone() is not None

    def known(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT uid FROM series")}

    def take_baseline(self, series: Iterable[tuple[str, str]]) -> int:
        """Record what is in the PACS at the very first poll as `baseline`; returns how many."""
        now = time.time()
        rows = [(uid, study, "baseline", now) for uid, study in series]
        with self._tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO series (uid, study_uid, status, seen_ts) VALUES (?, ?, ?, ?)", rows)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('baseline_ts', ?)", (str(now),))
        return len(rows)

    def add(
        self, uid: str, study_uid: str, status: SeriesStatus, reason: str | None = None, instances: int = -1
    ) -> bool:
        """A newly seen series; False when it was already known (never queued twice)."""
        now = time.time()
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO series (uid, study_uid, status, reason, instances, changed_ts, seen_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uid, study_uid, status, reason, instances, now, now),
            )
            return cursor.rowcount == 1

    def observe(self, uid: str, instances: int) -> None:
        """The instance count of an `arriving` series at this poll; a change restarts its settle time."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE series SET instances = ?, changed_ts = ? WHERE uid = ? AND status = 'arriving' "
                "AND instances != ?",
                (instances, time.time(), uid, instances),
            )

    def settle(self, settle_s: float) -> list[str]:
        """Queue the `arriving` series whose instance count has not changed for `settle_s`; their UIDs."""
        cutoff = time.time() - settle_s
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT uid FROM series WHERE status = 'arriving' AND changed_ts <= ? ORDER BY seen_ts, uid", (cutoff,)
            ).fetchall()
            conn.execute("UPDATE series SET status = 'queued' WHERE status = 'arriving' AND changed_ts <= ?", (cutoff,))
        return [row[0] for row in rows]

    def requeue_interrupted(self) -> int:
        with self._tx() as conn:
            return conn.execute("UPDATE series SET status = 'queued' WHERE status = 'running'").rowcount

    # ----------------------------------------------------------------------------------------- work
    def claim_due(self, limit: int) -> list[SeriesState]:
        """Mark up to `limit` queued (or due for retry) series `running` and return them, oldest first."""
        if limit <= 0:
            return []
        now = time.time()
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT * FROM series WHERE status = 'queued' OR (status = 'retry' AND next_try_ts <= ?) "
                "ORDER BY seen_ts, uid LIMIT ?",
                (now, limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE series SET status = 'running', attempts = attempts + 1 WHERE uid = ?", (row["uid"],)
                )
        return [self.get(row["uid"]) for row in rows]  # type: ignore[misc]

    def mark_done(self, uid: str, label_version: int, dicom_seg: str | None) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE series SET status = 'done', label_version = ?, dicom_seg = ?, done_ts = ? WHERE uid = ?",
                (label_version, dicom_seg, time.time(), uid),
            )

    def mark_failed(self, uid: str, error: str, retry_at: float | None) -> None:
        """`retry_at` None: no attempts left (`failed`); else `retry` at that time."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE series SET status = ?, error = ?, next_try_ts = ? WHERE uid = ?",
                ("failed" if retry_at is None else "retry", error, retry_at or 0.0, uid),
            )

    # ----------------------------------------------------------------------------------------- reports
    def get(self, uid: str) -> SeriesState | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM series WHERE uid = ?", (uid,)).fetchone()
        return SeriesState(**dict(row)) if row is not None else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM series GROUP BY status").fetchall()
        return {row[0]: row[1] for row in rows}

    def backlog(self) -> int:
        counts = self.counts()
        return sum(counts.get(s, 0) for s in PENDING)

    def recent(self, limit: int = 50, statuses: Iterable[str] | None = None) -> list[SeriesState]:
        wanted = [s for s in (statuses or ()) if s]
        where = f"WHERE status IN ({', '.join('?' * len(wanted))})" if wanted else "WHERE status != 'baseline'"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM series {where} ORDER BY seen_ts DESC, uid LIMIT ?", (*wanted, limit)
            ).fetchall()
        return [SeriesState(**dict(row)) for row in rows]

    def as_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "backlog": self.backlog()}
