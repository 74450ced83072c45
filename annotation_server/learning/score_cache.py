"""Uncertainty scores kept on disk, so a restart or the next annotator does not pay for them again.

One SQLite file beside the datastore's index (`<state_dir>/scores.sqlite`). A score is keyed by
(image, method, model, model version): when the served model changes version its old scores are simply
not looked up any more, and an image whose file changed (size or mtime) misses as well. Failures are
stored too (score NULL, the error text), so a broken image is not re-scored on every next-sample request;
an explicit `POST /scoring/{method}` retries it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation_server.datastore.sqlite import open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    image_id TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    image_stamp TEXT NOT NULL,
    score REAL,
    error TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    ts REAL NOT NULL,
    PRIMARY KEY (image_id, method, model, model_version)
)
"""


@dataclass(frozen=True)
class ScoreKey:
    """Which model (and version) a score belongs to, and by which method it was computed."""

    method: str
    model: str
    model_version: str


@dataclass(frozen=True)
class CachedScore:
    image_id: str
    score: float | None  # None when scoring this image failed
    error: str | None
    details: dict[str, Any]
    ts: float


class ScoreCache:
    """Thread-safe SQLite store of per-image scores (one connection, WAL, a lock around it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = open_database(path, _SCHEMA, synchronous="NORMAL")  # scores can be recomputed

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def put(
        self,
        image_id: str,
        key: ScoreKey,
        image_stamp: str,
        score: float | None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        with self._cursor() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    image_id,
                    key.method,
                    key.model,
                    key.model_version,
                    image_stamp,
                    score,
                    error,
                    json.dumps(details or {}),
                    time.time(),
                ),
            )

    def lookup(self, key: ScoreKey, stamps: dict[str, str]) -> dict[str, CachedScore]:
        """Entries for the images in `stamps` (id -> current file stamp) whose stamp still matches."""
        with self._cursor() as conn:
            rows = conn.execute(
                "SELECT image_id, image_stamp, score, error, details, ts FROM scores "
                "WHERE method = ? AND model = ? AND model_version = ?",
                (key.method, key.model, key.model_version),
            ).fetchall()
        found: dict[str, CachedScore] = {}
        for row in rows:
            image_id = row["image_id"]
            if stamps.get(image_id) != row["image_stamp"]:
                continue
            found[image_id] = CachedScore(
                image_id, row["score"], row["error"], json.loads(row["details"]), float(row["ts"])
            )
        return found
