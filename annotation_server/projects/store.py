"""Projects, assignments and case states in one SQLite file in the studies' state folder
(`<studies>/.annotation-server/projects.sqlite`), beside the datastore index and the federated queue."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from annotation_server.datastore.sqlite import immediate_transaction, open_database
from annotation_server.errors import NotFoundError
from annotation_server.projects.models import (
    Assignment,
    AssignmentStatus,
    CaseState,
    CaseStatus,
    Project,
    ProjectCreate,
    reader_tag,
)

PROJECTS_FILENAME = "projects.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    created_ts REAL NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    project_id INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    reader TEXT NOT NULL,
    tag TEXT NOT NULL,
    status TEXT NOT NULL,
    label_version INTEGER,
    seconds REAL,
    done_ts REAL,
    PRIMARY KEY (project_id, image_id, reader)
);
CREATE INDEX IF NOT EXISTS assignments_by_image ON assignments (image_id);
CREATE TABLE IF NOT EXISTS cases (
    project_id INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    status TEXT NOT NULL,
    consensus_version INTEGER,
    final_version INTEGER,
    closed_by TEXT,
    closed_ts REAL,
    PRIMARY KEY (project_id, image_id)
);
CREATE INDEX IF NOT EXISTS cases_by_image ON cases (image_id, status);
"""


class ProjectStore:
    """Thread-safe access to projects.sqlite: one connection serialised by a lock, as the federated queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = open_database(path, _SCHEMA)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> ProjectStore:
        return cls(state_dir / PROJECTS_FILENAME)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------------------------------------ projects
    def create(self, spec: ProjectCreate, assignment: dict[str, list[str]], created_by: str) -> Project:
        now = time.time()
        with immediate_transaction(self._conn, self._lock) as conn:
            cursor = conn.execute(
                "INSERT INTO projects (spec, created_ts, created_by) VALUES (?, ?, ?)",
                (spec.model_dump_json(), now, created_by),
            )
            project_id = int(cursor.lastrowid or 0)
            for image_id, readers in assignment.items():
                conn.execute(
                    "INSERT INTO cases (project_id, image_id, status) VALUES (?, ?, ?)",
                    (project_id, image_id, CaseStatus.open.value),
                )
                conn.executemany(
                    "INSERT INTO assignments (project_id, image_id, reader, tag, status) VALUES (?, ?, ?, ?, ?)",
                    [
                        (project_id, image_id, r, reader_tag(project_id, r), AssignmentStatus.assigned.value)
                        for r in readers
                    ],
                )
        return self.get(project_id)

    @staticmethod
    def _project(row: sqlite3.Row) -> Project:
        return Project(
            **json.loads(row["spec"]), id=row["id"], created_ts=row["created_ts"], created_by=row["created_by"]
        )

    def get(self, project_id: int) -> Project:
        rows = self._query("SELECT * FROM projects WHERE id = ?", (project_id,))
        if not rows:
            raise NotFoundError(f"project {project_id} not found; list projects with GET /projects")
        return self._project(rows[0])

    def list(self) -> list[Project]:
        return [self._project(r) for r in self._query("SELECT * FROM projects ORDER BY id")]

    # --------------------------------------------------------------------------------------- assignments
    def assignments(
        self, project_id: int | None = None, reader: str | None = None, image_id: str | None = None
    ) -> list[Assignment]:
        clauses, args = [], []
        for column, value in (("project_id", project_id), ("reader", reader), ("image_id", image_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM assignments{where} ORDER BY project_id, image_id, reader", tuple(args))
        return [Assignment(**dict(r)) for r in rows]

    def mark_read(self, project_id: int, image_id: str, reader: str, version: int, seconds: float | None) -> None:
        with immediate_transaction(self._conn, self._lock) as conn:
            conn.execute(
                "UPDATE assignments SET status = ?, label_version = ?, seconds = COALESCE(seconds, 0) + ?, "
                "done_ts = ? WHERE project_id = ? AND image_id = ? AND reader = ?",
                (AssignmentStatus.done.value, version, seconds or 0.0, time.time(), project_id, image_id, reader),
            )

    # --------------------------------------------------------------------------------------------- cases
    def case(self, project_id: int, image_id: str) -> CaseState:
        rows = self._query("SELECT * FROM cases WHERE project_id = ? AND image_id = ?", (project_id, image_id))
        if not rows:
            raise NotFoundError(
                f"image '{image_id}' is not a case of project {project_id}; see GET /projects/{project_id}/status"
            )
        return CaseState(**dict(rows[0]))

    def cases(self, project_id: int) -> list[CaseState]:
        rows = self._query("SELECT * FROM cases WHERE project_id = ? ORDER BY image_id", (project_id,))
        return [CaseState(**dict(r)) for r in rows]

    def open_cases_of(self, image_id: str) -> list[CaseState]:
        rows = self._query("SELECT * FROM cases WHERE image_id = ? AND status = ?", (image_id, CaseStatus.open.value))
        return [CaseState(**dict(r)) for r in rows]

    def cases_of(self, image_id: str) -> list[CaseState]:
        return [CaseState(**dict(r)) for r in self._query("SELECT * FROM cases WHERE image_id = ?", (image_id,))]

    def any_open(self) -> bool:
        return bool(self._query("SELECT 1 FROM cases WHERE status = ? LIMIT 1", (CaseStatus.open.value,)))

    def set_consensus(self, project_id: int, image_id: str, version: int) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE cases SET consensus_version = ? WHERE project_id = ? AND image_id = ?",
                (version, project_id, image_id),
            )

    def close_case(self, project_id: int, image_id: str, final_version: int, by: str) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE cases SET status = ?, final_version = ?, closed_by = ?, closed_ts = ? "
                "WHERE project_id = ? AND image_id = ?",
                (CaseStatus.closed.value, final_version, by, time.time(), project_id, image_id),
            )
