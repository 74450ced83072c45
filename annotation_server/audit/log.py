"""An append-only, hash-chained audit log in JSON lines: `<data dir>/audit/audit.jsonl`.

Each line is one record: a sequence number, the time, the actor (a logged-in user, or who ran a CLI
command), the client address, the action (`auth.login`, `label.save`, `model.promote`, ...), its target and
details, the previous record's hash and its own. A record's hash is SHA-256 over its canonical JSON
(sorted keys, no spaces) without the `hash` field, so changing any field of any line, or removing or
reordering lines, breaks the chain at that record (see verify.py). Removing the *last* lines leaves a
valid shorter chain; `audit.head` beside the log keeps the newest (seq, hash) so that is caught too.

Why JSON lines rather than SQLite: a person can read (and `grep`) it with nothing installed, and append
with O_APPEND is the one write a log needs. The server and the `annotate-server users` CLI may append at
the same time: each append takes an exclusive `flock` on the log and reads the chain's tail from the
file itself, so two processes never fork the chain.

What it does not do: stop someone with write access to the data folder from rewriting the whole chain
consistently (keep a copy of `audit.head` elsewhere, or ship the lines to a log host, for that).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"
GENESIS = "0" * 64
_TAIL_BYTES = 64 * 1024  # a record is far smaller; the last line is always inside this tail


def audit_dir(data_dir: Path) -> Path:
    return data_dir / "audit"


def record_hash(fields: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of a record without its `hash`."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    actor: str
    address: str | None
    action: str
    target: str | None
    details: dict[str, Any]
    prev: str
    hash: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditRecord:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class AuditLog:
    """Appends records and reads them back; safe from several threads and processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # who did what from where: not for other accounts on the machine
        self.path = folder / LOG_NAME
        self.head_path = folder / HEAD_NAME
        self._lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> AuditLog:
        return cls(audit_dir(data_dir))

    # ------------------------------------------------------------------------------------------- write
    def record(
        self,
        action: str,
        actor: str,
        address: str | None = None,
        target: str | None = None,
        **details: Any,
    ) -> AuditRecord:
        """Append one record and return it (durable on disk when this returns)."""
        with self._lock, open(self.path, "a+b") as handle:
            os.chmod(self.path, 0o600)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
            last = _last_record(handle)
            fields: dict[str, Any] = {
                "seq": last["seq"] + 1 if last else 1,
                "ts": round(time.time(), 6),
                "actor": actor,
                "address": address,
                "action": action,
                "target": target,
                "details": _jsonable(details),
                "prev": last["hash"] if last else GENESIS,
            }
            fields["hash"] = record_hash(fields)
            line = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            self._write_head(fields["seq"], fields["hash"])
        return AuditRecord.from_json(fields)

    def _write_head(self, seq: int, digest: str) -> None:
        temporary = self.head_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"seq": seq, "hash": digest}) + "\n", encoding="utf-8")
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.head_path)

    # -------------------------------------------------------------------------------------------- read
    def records(self) -> Iterator[AuditRecord]:
        """Every record, oldest first (lines that do not parse are skipped here; verify reports them)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    yield AuditRecord.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue

    def query(
        self,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[AuditRecord]]:
        """Matching records newest first, as (total matching, one page). `action` matches a prefix at a dot
        boundary too: `label` finds `label.save` and `label.retire`."""
        matching = [
            r
            for r in self.records()
            if (actor is None or r.actor == actor)
            and (action is None or r.action == action or r.action.startswith(action + "."))
            and (target is None or r.target == target)
            and (since is None or r.ts >= since)
            and (until is None or r.ts <= until)
        ]
        matching.reverse()
        return len(matching), matching[offset : offset + limit]


def _last_record(handle: Any) -> dict[str, Any] | None:
    """The last complete record of an open log (None when empty)."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return None
    handle.seek(max(0, size - _TAIL_BYTES))
    lines = handle.read().decode("utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a torn last line (a crash mid-write) is skipped; verify reports it
        if isinstance(data, dict) and "seq" in data and "hash" in data:
            return data
    return None


def _jsonable(value: Any) -> Any:
    """Details as plain JSON (paths and other objects as their text), so the hash is reproducible."""
    return json.loads(json.dumps(value, default=str))
