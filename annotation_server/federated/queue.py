"""The site's federated training queue: an embedded SQLite file beside the datastore's index.

Every saved `final` label version becomes one entry. Entries are never deleted: a newer final label of
the same image marks the older entry `superseded`, a reviewer's exclusion keeps its reason, so the queue
is also the site's record of what was (and was not) offered to federated training. WAL journaling with
`synchronous=FULL`, as the datastore index, so a committed entry survives a crash and the server and the
command line (or the federated job) can use the file at the same time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from annotation_server.datastore.records import LabelVersion
from annotation_server.datastore.sqlite import immediate_transaction, open_database
from annotation_server.errors import ConflictError, ForbiddenError, InvalidRequestError, NotFoundError
from annotation_server.federated.entries import Effort, QueueEntry, QueueStatus

QUEUE_FILENAME = "fl_queue.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    label_tag TEXT NOT NULL,
    label_version INTEGER NOT NULL,
    label_relpath TEXT NOT NULL,
    label_sha256 TEXT NOT NULL,
    annotator TEXT NOT NULL,
    saved_ts REAL NOT NULL,
    enqueued_ts REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    reviewer TEXT,
    reviewed_ts REAL,
    ai_assisted INTEGER NOT NULL,
    model TEXT,
    model_version TEXT,
    dice REAL,
    voxels_changed INTEGER,
    labeled_voxels INTEGER,
    interactions INTEGER,
    seconds REAL,
    UNIQUE (image_id, label_tag, label_version)
);
CREATE INDEX IF NOT EXISTS entries_by_status ON entries (status, image_id);
CREATE INDEX IF NOT EXISTS entries_by_image ON entries (image_id, label_version);
CREATE INDEX IF NOT EXISTS entries_by_saved ON entries (saved_ts);
"""

_LIVE = (QueueStatus.pending_review.value, QueueStatus.eligible.value)


def _entry(row: sqlite3.Row) -> QueueEntry:
    return QueueEntry(**{**dict(row), "ai_assisted": bool(row["ai_assisted"])})


def _not_found(entry_id: int) -> NotFoundError:
    return NotFoundError(
        f"queue entry {entry_id} not found; list entries with GET /fl/queue or `annotate-server fl queue list`"
    )


class FederatedQueue:
    """Thread-safe access to the queue file. One connection, serialised by a lock: statements take microseconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = open_database(path, _SCHEMA)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> FederatedQueue:
        """The queue of the datastore whose state folder is `state_dir` (`<studies>/.annotation-server`)."""
        return cls(state_dir / QUEUE_FILENAME)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with immediate_transaction(self._conn, self._lock) as conn:
            yield conn

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -------------------------------------------------------------------------------------------- writes
    def enqueue(self, label: LabelVersion, effort: Effort, review_required: bool = False) -> QueueEntry:
        """Add a saved final label; older live entries of the image become `superseded`.

        Enqueuing the same label version twice returns the existing entry (saves and backfills may race).
        """
        return self.enqueue_many([(label, effort)], review_required)[0]

    def enqueue_many(
        self, items: Sequence[tuple[LabelVersion, Effort]], review_required: bool = False
    ) -> list[QueueEntry]:
        """`enqueue` for many labels in one transaction (one fsync), e.g. when catching up with a datastore."""
        now = time.time()
        with self._transaction() as conn:
            ids = [self._insert(conn, label, effort, review_required, now) for label, effort in items]
            return [self._get(conn, entry_id) for entry_id in ids]

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, label: LabelVersion, effort: Effort, review_required: bool, now: float
    ) -> int:
        existing = conn.execute(
            "SELECT id FROM entries WHERE image_id = ? AND label_tag = ? AND label_version = ?",
            (label.image_id, label.tag, label.version),
        ).fetchone()
        if existing is not None:
            return existing[0]
        newest = conn.execute(
            "SELECT MAX(label_version) FROM entries WHERE image_id = ? AND label_tag = ?",
            (label.image_id, label.tag),
        ).fetchone()[0]
        outdated = newest is not None and newest > label.version
        status = QueueStatus.pending_review if review_required else QueueStatus.eligible
        cursor = conn.execute(
            "INSERT INTO entries (image_id, label_tag, label_version, label_relpath, label_sha256, annotator, "
            "saved_ts, enqueued_ts, status, reason, ai_assisted, model, model_version, dice, voxels_changed, "
            "labeled_voxels, interactions, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                label.image_id,
                label.tag,
                label.version,
                label.relpath,
                label.sha256,
                label.author,
                label.created_ts,
                now,
                (QueueStatus.superseded if outdated else status).value,
                f"a newer label version ({newest}) was already queued" if outdated else None,
                int(effort.ai_assisted),
                effort.model,
                effort.model_version,
                effort.dice,
                effort.voxels_changed,
                effort.labeled_voxels,
                effort.interactions,
                effort.seconds,
            ),
        )
        entry_id = int(cursor.lastrowid or 0)
        if not outdated:
            conn.execute(
                f"UPDATE entries SET status = ?, reason = ? WHERE image_id = ? AND label_tag = ? AND id != ? "
                f"AND status IN ({', '.join('?' * len(_LIVE))})",
                (
                    QueueStatus.superseded.value,
                    f"superseded by label version {label.version} (entry {entry_id})",
                    label.image_id,
                    label.tag,
                    entry_id,
                    *_LIVE,
                ),
            )
        return entry_id

    def approve(self, entry_id: int, reviewer: str = "reviewer", four_eyes: bool = False) -> QueueEntry:
        """A reviewer admits the entry to training (also re-admits an excluded one that is still the newest).

        `four_eyes` (set when the reviewer's name is proven by a login): nobody approves their own label, so
        every label trained on was looked at by a second person; ForbiddenError (403) otherwise."""
        with self._transaction() as conn:
            entry = self._get(conn, entry_id)
            if four_eyes and entry.annotator == reviewer:
                raise ForbiddenError(
                    f"entry {entry_id} is a label by '{reviewer}' and nobody approves their own: another "
                    "reviewer must approve it (four-eyes rule); you may still exclude it"
                )
            if entry.status is QueueStatus.eligible:
                return entry
            self._refuse_if_replaced(conn, entry, "approve")
            conn.execute(
                "UPDATE entries SET status = ?, reason = NULL, reviewer = ?, reviewed_ts = ? WHERE id = ?",
                (QueueStatus.eligible.value, reviewer, time.time(), entry_id),
            )
            return self._get(conn, entry_id)

    def exclude(self, entry_id: int, reason: str, reviewer: str = "reviewer") -> QueueEntry:
        """Take the entry out of training for good (until someone approves it again); the reason is kept."""
        if not reason.strip():
            raise InvalidRequestError("give a reason for excluding the entry (e.g. 'tumor boundary wrong')")
        with self._transaction() as conn:
            entry = self._get(conn, entry_id)
            self._refuse_if_replaced(conn, entry, "exclude")
            conn.execute(
                "UPDATE entries SET status = ?, reason = ?, reviewer = ?, reviewed_ts = ? WHERE id = ?",
                (QueueStatus.excluded.value, reason.strip(), reviewer, time.time(), entry_id),
            )
            return self._get(conn, entry_id)

    def _refuse_if_replaced(self, conn: sqlite3.Connection, entry: QueueEntry, action: str) -> None:
        newer = conn.execute(
            "SELECT id, label_version FROM entries WHERE image_id = ? AND label_tag = ? AND label_version > ? "
            "ORDER BY label_version DESC LIMIT 1",
            (entry.image_id, entry.label_tag, entry.label_version),
        ).fetchone()
        if entry.status is QueueStatus.superseded or newer is not None:
            hint = f"; {action} entry {newer['id']} (version {newer['label_version']}) instead" if newer else ""
            raise ConflictError(
                f"queue entry {entry.id} (image '{entry.image_id}' label version {entry.label_version}) was "
                f"superseded by a newer final label{hint}"
            )

    # --------------------------------------------------------------------------------------------- reads
    @staticmethod
    def _get(conn: sqlite3.Connection, entry_id: int) -> QueueEntry:
        row = conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise _not_found(entry_id)
        return _entry(row)

    def get(self, entry_id: int) -> QueueEntry:
        with self._lock:
            return self._get(self._conn, entry_id)

    def list_entries(
        self,
        status: QueueStatus | None = None,
        annotator: str | None = None,
        model_version: str | None = None,
        since: float | None = None,
        image_id: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> tuple[int, list[QueueEntry]]:
        """(total matching, one page of them, newest first). `since` compares with the label's save time."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("status", status.value if status else None),
            ("annotator", annotator),
            ("model_version", model_version),
            ("image_id", image_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append("saved_ts >= ?")
            args.append(since)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        total = self._query(f"SELECT COUNT(*) FROM entries{where}", tuple(args))[0][0]
        page = self._query(
            f"SELECT * FROM entries{where} ORDER BY saved_ts DESC, id DESC LIMIT ? OFFSET ?",
            (*args, -1 if limit is None else limit, offset),
        )
        return total, [_entry(r) for r in page]

    def count(self) -> dict[QueueStatus, int]:
        """Entries per status (every status present, zero included)."""
        counts = dict.fromkeys(QueueStatus, 0)
        for row in self._query("SELECT status, COUNT(*) FROM entries GROUP BY status"):
            counts[QueueStatus(row[0])] = row[1]
        return counts

    def eligible(self) -> list[QueueEntry]:
        """What the site's federated job trains on: the newest final label per image, if it is eligible."""
        rows = self._query(
            "SELECT * FROM entries WHERE status = ? ORDER BY image_id, label_version", (QueueStatus.eligible.value,)
        )
        return [_entry(r) for r in rows]

    def current(self) -> list[QueueEntry]:
        """The newest entry of each labeled image, whatever its status (the effort report's population).

        An excluded entry is never superseded, so "status != superseded" would count an image twice once a
        newer label replaces an excluded (or retired) one.
        """
        rows = self._query(
            "SELECT * FROM entries e WHERE label_version = (SELECT MAX(label_version) FROM entries "
            "WHERE image_id = e.image_id AND label_tag = e.label_tag) ORDER BY saved_ts"
        )
        return [_entry(r) for r in rows]

    def latest_versions(self) -> dict[tuple[str, str], tuple[int, int, QueueStatus]]:
        """(image, tag) -> (entry id, label version, status) of the newest entry, for reconciling with a datastore."""
        rows = self._query(
            "SELECT id, image_id, label_tag, label_version, status FROM entries e WHERE label_version = "
            "(SELECT MAX(label_version) FROM entries WHERE image_id = e.image_id AND label_tag = e.label_tag)"
        )
        return {(r["image_id"], r["label_tag"]): (r["id"], r["label_version"], QueueStatus(r["status"])) for r in rows}
