"""ModelRegistry: numbered, immutable model versions and which one serves, in one folder plus SQLite.

Layout under `root` (one registry per site and app):

    registry.sqlite          versions, the serving pointer and the promotion/rollback log
    <model>/v0003/           a complete MONAI bundle (configs/, models/) + manifest.json (+ training_curve.png)

A version folder is written under a temporary name and renamed into place, then made read-only: a
crash never leaves half a version, and nothing rewrites a version later. The server, the CLI and
training processes may all use the same registry at once; SQLite serialises their writes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from annotation_server.datastore.atomic import atomic_write_bytes, fsync_dir
from annotation_server.datastore.sqlite import immediate_transaction, open_database
from annotation_server.errors import ConflictError, InvalidRequestError, NotFoundError
from annotation_server.inference.bundle import load_bundle
from annotation_server.registry.records import ModelVersion, RegistryEvent, VersionSource

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
    created_ts REAL NOT NULL, sha256 TEXT NOT NULL, metrics TEXT NOT NULL, provenance TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '', PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS serving (model TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL, model TEXT NOT NULL, action TEXT NOT NULL, version INTEGER NOT NULL,
    previous INTEGER, actor TEXT NOT NULL, reason TEXT NOT NULL);
"""
MANIFEST = "manifest.json"
# A version's row plus whether it ever served (a past promotion or rollback to it): one query, not one per version.
_SELECT_VERSIONS = (
    "SELECT v.*, EXISTS(SELECT 1 FROM events e WHERE e.model = v.model AND e.version = v.version "
    "AND e.action IN ('promote', 'rollback')) AS served FROM versions v"
)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._db_path = self.root / "registry.sqlite"

    # --------------------------------------------------------------------------------------------- storage
    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A short-lived connection: registry calls are rare, and several processes share the file."""
        db = open_database(self._db_path, SCHEMA, shared=False)
        try:
            if write:
                with immediate_transaction(db) as conn:
                    yield conn
            else:
                yield db
        finally:
            db.close()

    def _row_to_version(self, row: sqlite3.Row, serving: int | None) -> ModelVersion:
        version = int(row["version"])
        status = "serving" if serving == version else ("retired" if row["served"] else "candidate")
        return ModelVersion(
            model=row["model"],
            version=version,
            path=row["path"],
            source=row["source"],
            status=status,
            created_ts=row["created_ts"],
            sha256=row["sha256"],
            metrics=json.loads(row["metrics"]),
            provenance=json.loads(row["provenance"]),
            note=row["note"],
        )

    # --------------------------------------------------------------------------------------------- queries
    def models(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT model FROM versions ORDER BY model")]

    def serving_number(self, model: str) -> int | None:
        with self._connect() as db:
            row = db.execute("SELECT version FROM serving WHERE model=?", (model,)).fetchone()
        return int(row[0]) if row else None

    def versions(self, model: str) -> list[ModelVersion]:
        serving = self.serving_number(model)
        with self._connect() as db:
            rows = db.execute(f"{_SELECT_VERSIONS} WHERE model=? ORDER BY version", (model,)).fetchall()
        return [self._row_to_version(r, serving) for r in rows]

    def get(self, model: str, version: int) -> ModelVersion:
        with self._connect() as db:
            row = db.execute(f"{_SELECT_VERSIONS} WHERE model=? AND version=?", (model, version)).fetchone()
        if row is None:
            known = ", ".join(str(v.version) for v in self.versions(model)) or "none"
            raise NotFoundError(f"model '{model}' has no version {version} (versions: {known})")
        return self._row_to_version(row, self.serving_number(model))

    def serving(self, model: str) -> ModelVersion | None:
        number = self.serving_number(model)
        return self.get(model, number) if number is not None else None

    def events(self, model: str | None = None) -> list[RegistryEvent]:
        query = "SELECT * FROM events" + (" WHERE model=?" if model else "") + " ORDER BY ts, rowid"
        with self._connect() as db:
            rows = db.execute(query, (model,) if model else ()).fetchall()
        return [RegistryEvent(**dict(r)) for r in rows]

    # ---------------------------------------------------------------------------------------------- writes
    def add_version(
        self,
        model: str,
        bundle_dir: Path,
        source: VersionSource,
        metrics: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        note: str = "",
        extra_files: dict[str, Path] | None = None,
    ) -> ModelVersion:
        """Copy a complete bundle in as the next version (a candidate; promotion is a separate step).

        The bundle is verified first (weights against the sha256 in its metadata), so a broken bundle
        never becomes a version.
        """
        bundle = load_bundle(bundle_dir)
        staging = self.root / model / f".staging-{uuid.uuid4().hex[:8]}"
        metrics, provenance = dict(metrics or {}), dict(provenance or {})
        try:
            shutil.copytree(bundle.root, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            for name, path in (extra_files or {}).items():
                shutil.copyfile(path, staging / name)
            with self._connect(write=True) as db:
                row = db.execute("SELECT MAX(version) FROM versions WHERE model=?", (model,)).fetchone()
                number = int(row[0] or 0) + 1
                final = self.root / model / f"v{number:04d}"
                if final.exists():  # renamed in by a process killed before its commit: no row names it
                    shutil.rmtree(final)
                manifest = {
                    "model": model,
                    "version": number,
                    "source": source,
                    "sha256": bundle.sha256,
                    "metrics": metrics,
                    "provenance": provenance,
                    "note": note,
                    "created_ts": time.time(),
                }
                atomic_write_bytes(staging / MANIFEST, json.dumps(manifest, indent=1).encode())
                os.replace(staging, final)
                fsync_dir(final.parent)
                db.execute(
                    "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        model,
                        number,
                        str(final),
                        source,
                        manifest["created_ts"],
                        bundle.sha256,
                        json.dumps(metrics),
                        json.dumps(provenance),
                        note,
                    ),
                )
                db.execute(
                    "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                    (time.time(), model, "register", number, None, "system", f"{source} version"),
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _make_read_only(final)
        return self.get(model, number)

    def ensure_registered(self, model: str, bundle_dir: Path) -> ModelVersion:
        """Register a shipped bundle once (matched by weights checksum) and serve it if nothing serves yet.

        A newer shipped bundle (after a package upgrade) replaces a serving shipped version, but never a
        version trained or federated at this site: those were promoted on purpose.
        """
        sha = load_bundle(bundle_dir).sha256
        existing = [v for v in self.versions(model) if v.sha256 == sha and v.source == "shipped"]
        version = existing[0] if existing else self.add_version(model, bundle_dir, "shipped", note="shipped bundle")
        serving = self.serving(model)
        if serving is None or (serving.source == "shipped" and not existing and serving.version != version.version):
            self.promote(model, version.version, actor="system", reason="shipped bundle")
            version = self.get(model, version.version)
        return version

    def promote(self, model: str, version: int, actor: str = "admin", reason: str = "") -> ModelVersion:
        """Make `version` the serving one. The server picks the change up without a restart."""
        self.get(model, version)  # 404 for an unknown version
        with self._connect(write=True) as db:
            row = db.execute("SELECT version FROM serving WHERE model=?", (model,)).fetchone()
            previous = int(row[0]) if row else None
            if previous == version:
                raise ConflictError(f"{model}@{version} is already serving")
            db.execute("INSERT OR REPLACE INTO serving VALUES (?,?)", (model, version))
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                (time.time(), model, "promote", version, previous, actor, reason),
            )
        return self.get(model, version)

    def reject(self, model: str, version: int, reason: str, actor: str = "system") -> None:
        """Record that the promotion gate kept `version` a candidate, and why (shown by `models list`)."""
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                (time.time(), model, "reject", version, self.serving_number(model), actor, reason),
            )

    def rollback(self, model: str, to: int | None = None, actor: str = "admin", reason: str = "") -> ModelVersion:
        """Serve the version that served before the current one (or `to`)."""
        current = self.serving_number(model)
        if current is None:
            raise NotFoundError(f"model '{model}' has no serving version to roll back")
        if to is None:
            # Follow the promotion chain: 1 -> 2 -> 3, rollback gives 2, rollback again gives 1.
            history = [e for e in self.events(model) if e.action == "promote" and e.version == current]
            previous = history[-1].previous if history else None
            if previous is None:
                raise InvalidRequestError(
                    f"{model}@{current} is the first version that served; name a version to roll back to"
                )
            to = previous
        self.get(model, to)
        if to == current:
            raise ConflictError(f"{model}@{to} is already serving")
        with self._connect(write=True) as db:
            db.execute("INSERT OR REPLACE INTO serving VALUES (?,?)", (model, to))
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                (time.time(), model, "rollback", to, current, actor, reason),
            )
        return self.get(model, to)


def _make_read_only(folder: Path) -> None:
    """Versions are immutable: files lose write permission so a stray script cannot change one in place
    (folders stay writable, so an admin can still delete a whole version deliberately)."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
