"""The datastore's SQLite index: images, immutable label versions and the head version per (image, tag).

WAL journaling with `synchronous=FULL` means a committed save survives a crash and a crash mid-write
leaves the previous state intact; every change is one short transaction. Queries are indexed so that
stats, listings and next-sample stay fast at tens of thousands of studies, and a save costs the same
whatever the store's size (no whole-index rewrite as in MONAI Label's JSON file).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from annotation_server.datastore.records import DatastoreStats, ImageRecord, LabelSource, LabelVersion
from annotation_server.datastore.sqlite import immediate_transaction, open_database

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    ext TEXT NOT NULL,
    relpath TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mtime REAL NOT NULL DEFAULT 0,
    added_ts REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    geometry TEXT
);
CREATE TABLE IF NOT EXISTS label_versions (
    image_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    version INTEGER NOT NULL,
    ext TEXT NOT NULL,
    relpath TEXT NOT NULL,
    author TEXT NOT NULL,
    created_ts REAL NOT NULL,
    source_model TEXT,
    source_model_version TEXT,
    info TEXT NOT NULL DEFAULT '{}',
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (image_id, tag, version)
);
CREATE TABLE IF NOT EXISTS label_heads (
    image_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (image_id, tag)
);
CREATE INDEX IF NOT EXISTS label_heads_by_tag ON label_heads (tag, image_id);
CREATE TABLE IF NOT EXISTS strategy_picks (
    strategy TEXT NOT NULL,
    image_id TEXT NOT NULL,
    ts REAL NOT NULL,
    client_id TEXT,
    PRIMARY KEY (strategy, image_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_LABEL_COLUMNS = (
    "image_id, tag, version, ext, relpath, author, created_ts, source_model, source_model_version, info, sha256, "
    "size, deleted"
)


def _image_from_row(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=row["id"],
        name=row["name"],
        ext=row["ext"],
        relpath=row["relpath"],
        kind=row["kind"],
        size=row["size"],
        mtime=row["mtime"],
        added_ts=row["added_ts"],
        info=json.loads(row["info"]),
    )


def _label_from_row(row: sqlite3.Row) -> LabelVersion:
    return LabelVersion(
        image_id=row["image_id"],
        tag=row["tag"],
        version=row["version"],
        ext=row["ext"],
        relpath=row["relpath"],
        author=row["author"],
        created_ts=row["created_ts"],
        source=LabelSource(model=row["source_model"], model_version=row["source_model_version"]),
        info=json.loads(row["info"]),
        sha256=row["sha256"],
        size=row["size"],
        deleted=bool(row["deleted"]),
    )


class DatastoreIndex:
    """Thread-safe access to the SQLite index. One connection, serialised by a lock: statements take microseconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = open_database(path, _SCHEMA)
        self._conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work (BEGIN IMMEDIATE ... COMMIT, rolled back on any error)."""
        with immediate_transaction(self._conn, self._lock) as conn:
            yield conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ----------------------------------------------------------------------------------------- images
    def get_image(self, image_id: str) -> ImageRecord | None:
        rows = self._query("SELECT * FROM images WHERE id = ?", (image_id,))
        return _image_from_row(rows[0]) if rows else None

    def list_images(self) -> list[ImageRecord]:
        return [_image_from_row(r) for r in self._query("SELECT * FROM images ORDER BY id")]

    def image_file_states(self) -> dict[str, tuple[str, int, float]]:
        """id -> (relpath, size, mtime) for the scanner's reconciliation."""
        rows = self._query("SELECT id, relpath, size, mtime FROM images")
        return {r["id"]: (r["relpath"], r["size"], r["mtime"]) for r in rows}

    def upsert_image(self, record: ImageRecord, conn: sqlite3.Connection | None = None) -> None:
        sql = (
            "INSERT INTO images (id, name, ext, relpath, kind, size, mtime, added_ts, info) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, ext=excluded.ext, relpath=excluded.relpath, "
            "kind=excluded.kind, size=excluded.size, mtime=excluded.mtime, geometry=NULL"
        )
        params = (
            record.id,
            record.name,
            record.ext,
            record.relpath,
            record.kind,
            record.size,
            record.mtime,
            record.added_ts,
            json.dumps(record.info),
        )
        if conn is not None:
            conn.execute(sql, params)
        else:
            with self.transaction() as c:
                c.execute(sql, params)

    def delete_images(self, image_ids: Sequence[str], conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in image_ids])
        conn.executemany("DELETE FROM strategy_picks WHERE image_id = ?", [(i,) for i in image_ids])

    def set_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE images SET info = ? WHERE id = ?", (json.dumps(info), image_id))

    def get_geometry(self, image_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT geometry FROM images WHERE id = ?", (image_id,))
        return json.loads(rows[0]["geometry"]) if rows and rows[0]["geometry"] else None

    def set_geometry(self, image_id: str, geometry: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE images SET geometry = ? WHERE id = ?", (json.dumps(geometry), image_id))

    def count_images(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM images")[0][0])

    # ----------------------------------------------------------------------------------------- labels
    def next_version(self, conn: sqlite3.Connection, image_id: str, tag: str) -> int:
        row = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM label_versions WHERE image_id = ? AND tag = ?", (image_id, tag)
        ).fetchone()
        return int(row[0]) + 1

    def insert_label(self, conn: sqlite3.Connection, label: LabelVersion) -> None:
        conn.execute(
            f"INSERT INTO label_versions ({_LABEL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                label.image_id,
                label.tag,
                label.version,
                label.ext,
                label.relpath,
                label.author,
                label.created_ts,
                label.source.model,
                label.source.model_version,
                json.dumps(label.info),
                label.sha256,
                label.size,
                int(label.deleted),
            ),
        )
        conn.execute(
            "INSERT INTO label_heads (image_id, tag, version) VALUES (?,?,?) "
            "ON CONFLICT(image_id, tag) DO UPDATE SET version = excluded.version",
            (label.image_id, label.tag, label.version),
        )

    def head(self, image_id: str, tag: str) -> LabelVersion | None:
        rows = self._query(
            f"SELECT {', '.join('v.' + c.strip() for c in _LABEL_COLUMNS.split(','))} FROM label_heads h "
            "JOIN label_versions v ON v.image_id = h.image_id AND v.tag = h.tag AND v.version = h.version "
            "WHERE h.image_id = ? AND h.tag = ?",
            (image_id, tag),
        )
        return _label_from_row(rows[0]) if rows else None

    def heads_for_image(self, image_id: str) -> list[LabelVersion]:
        rows = self._query(
            f"SELECT {', '.join('v.' + c.strip() for c in _LABEL_COLUMNS.split(','))} FROM label_heads h "
            "JOIN label_versions v ON v.image_id = h.image_id AND v.tag = h.tag AND v.version = h.version "
            "WHERE h.image_id = ? ORDER BY h.tag",
            (image_id,),
        )
        return [_label_from_row(r) for r in rows]

    def all_heads(self) -> dict[str, list[LabelVersion]]:
        rows = self._query(
            f"SELECT {', '.join('v.' + c.strip() for c in _LABEL_COLUMNS.split(','))} FROM label_heads h "
            "JOIN label_versions v ON v.image_id = h.image_id AND v.tag = h.tag AND v.version = h.version"
        )
        heads: dict[str, list[LabelVersion]] = {}
        for row in rows:
            heads.setdefault(row["image_id"], []).append(_label_from_row(row))
        return heads

    def get_version(self, image_id: str, tag: str, version: int) -> LabelVersion | None:
        rows = self._query(
            f"SELECT {_LABEL_COLUMNS} FROM label_versions WHERE image_id = ? AND tag = ? AND version = ?",
            (image_id, tag, version),
        )
        return _label_from_row(rows[0]) if rows else None

    def versions(self, image_id: str, tag: str | None = None) -> list[LabelVersion]:
        if tag is None:
            rows = self._query(
                f"SELECT {_LABEL_COLUMNS} FROM label_versions WHERE image_id = ? ORDER BY tag, version", (image_id,)
            )
        else:
            rows = self._query(
                f"SELECT {_LABEL_COLUMNS} FROM label_versions WHERE image_id = ? AND tag = ? ORDER BY version",
                (image_id, tag),
            )
        return [_label_from_row(r) for r in rows]

    def tombstone_head(self, image_id: str, tag: str) -> bool:
        """Retire the (image, tag) label: versions stay on disk and in history, marked deleted; no head remains."""
        with self.transaction() as conn:
            cur = conn.execute("DELETE FROM label_heads WHERE image_id = ? AND tag = ?", (image_id, tag))
            conn.execute("UPDATE label_versions SET deleted = 1 WHERE image_id = ? AND tag = ?", (image_id, tag))
            return cur.rowcount > 0

    def tombstone_all(self, conn: sqlite3.Connection, image_id: str) -> None:
        conn.execute("DELETE FROM label_heads WHERE image_id = ?", (image_id,))
        conn.execute("UPDATE label_versions SET deleted = 1 WHERE image_id = ?", (image_id,))

    def set_label_info(self, label: LabelVersion, info: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE label_versions SET info = ? WHERE image_id = ? AND tag = ? AND version = ?",
                (json.dumps(info), label.image_id, label.tag, label.version),
            )

    def version_keys(self) -> set[tuple[str, str]]:
        """Every (image id, tag) that has at least one saved version, deleted or not."""
        return {(r[0], r[1]) for r in self._query("SELECT DISTINCT image_id, tag FROM label_versions")}

    def tags_with_heads(self, image_id: str) -> set[str]:
        return {r["tag"] for r in self._query("SELECT tag FROM label_heads WHERE image_id = ?", (image_id,))}

    # ------------------------------------------------------------------------------------- statistics
    def stats(self) -> DatastoreStats:
        total = self.count_images()
        tag_rows = self._query(
            "SELECT h.tag, COUNT(*) AS n FROM label_heads h JOIN images i ON i.id = h.image_id GROUP BY h.tag"
        )
        label_tags = {r["tag"]: int(r["n"]) for r in tag_rows}
        return DatastoreStats(total=total, completed=label_tags.get("final", 0), label_tags=label_tags)

    def unlabeled_ids(self, tag: str = "final", exclude: Sequence[str] = ()) -> list[str]:
        """Ids of images without a head label under `tag`, sorted (what uncertainty strategies rank)."""
        rows = self._query(
            "SELECT i.id FROM images i WHERE NOT EXISTS "
            "(SELECT 1 FROM label_heads h WHERE h.image_id = i.id AND h.tag = ?) ORDER BY i.id",
            (tag,),
        )
        excluded = set(exclude)
        return [r["id"] for r in rows if r["id"] not in excluded]

    def first_unlabeled(self, descending: bool = False, tag: str = "final", exclude: Sequence[str] = ()) -> str | None:
        order = "DESC" if descending else "ASC"
        placeholders = ",".join("?" for _ in exclude)
        not_in = f"AND i.id NOT IN ({placeholders})" if exclude else ""
        rows = self._query(
            "SELECT i.id FROM images i WHERE NOT EXISTS "
            f"(SELECT 1 FROM label_heads h WHERE h.image_id = i.id AND h.tag = ?) {not_in} ORDER BY i.id {order} "
            "LIMIT 1",
            (tag, *exclude),
        )
        return rows[0]["id"] if rows else None

    def unlabeled_with_last_pick(self, strategy: str, tag: str = "final") -> list[tuple[str, float]]:
        """(id, last time `strategy` picked it, else when the image was added) for unlabeled images."""
        rows = self._query(
            "SELECT i.id, COALESCE(p.ts, i.added_ts) AS ts FROM images i "
            "LEFT JOIN strategy_picks p ON p.image_id = i.id AND p.strategy = ? "
            "WHERE NOT EXISTS (SELECT 1 FROM label_heads h WHERE h.image_id = i.id AND h.tag = ?)",
            (strategy, tag),
        )
        return [(r["id"], float(r["ts"])) for r in rows]

    def record_pick(self, strategy: str, image_id: str, client_id: str | None) -> float:
        ts = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO strategy_picks (strategy, image_id, ts, client_id) VALUES (?,?,?,?) "
                "ON CONFLICT(strategy, image_id) DO UPDATE SET ts = excluded.ts, client_id = excluded.client_id",
                (strategy, image_id, ts, client_id),
            )
        return ts

    def picks_for_image(self, image_id: str) -> dict[str, dict[str, Any]]:
        rows = self._query("SELECT strategy, ts, client_id FROM strategy_picks WHERE image_id = ?", (image_id,))
        return {r["strategy"]: {"ts": int(r["ts"]), "client_id": r["client_id"]} for r in rows}
