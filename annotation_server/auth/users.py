"""The site's user accounts: one SQLite file in the server's data folder, shared by the server and the CLI.

Only password hashes are stored. `generation` changes with every password change, and tokens carry the
generation they were issued under, so a new password signs out every old token at once.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from annotation_server.auth.passwords import check_strength, dummy_hash, hash_password, verify_password
from annotation_server.auth.roles import Role, parse_role
from annotation_server.datastore.sqlite import immediate_transaction, open_database
from annotation_server.errors import ConflictError, InvalidRequestError, NotFoundError

USERS_FILENAME = "users.sqlite"


def private_dir(path: Path) -> Path:
    """A folder only the server's own account can read (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    created_ts REAL NOT NULL,
    updated_ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    token_id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    expires_ts REAL NOT NULL
);
"""


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    generation: int
    created_ts: float
    updated_ts: float


def check_username(username: str) -> str:
    if not NAME_PATTERN.match(username):
        raise InvalidRequestError(
            f"invalid user name '{username}': use 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit"
        )
    return username


def _role(value: str) -> Role:
    try:
        return parse_role(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


def _password(password: str) -> str:
    try:
        check_strength(password)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return hash_password(password)


class UserStore:
    """Accounts in `<data dir>/auth/users.sqlite`; safe to use from several threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        private_dir(path.parent)  # the WAL and shm files hold hashes too: the folder itself is private
        self._conn = open_database(path, SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------------------------------ reads
    @staticmethod
    def _user(row: object) -> User:
        return User(
            username=row["username"],  # type: ignore[index]
            role=Role(row["role"]),  # type: ignore[index]
            generation=row["generation"],  # type: ignore[index]
            created_ts=row["created_ts"],  # type: ignore[index]
            updated_ts=row["updated_ts"],  # type: ignore[index]
        )

    def get(self, username: str) -> User | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return self._user(row) if row is not None else None

    def list(self) -> list[User]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM users ORDER BY username").fetchall()
        return [self._user(row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right, else None (unknown names cost the same time as wrong ones)."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        stored = row["password_hash"] if row is not None else dummy_hash()
        ok = verify_password(password, stored)
        return self._user(row) if ok and row is not None else None

    def is_revoked(self, token_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM revoked_tokens WHERE token_id = ?", (token_id,)).fetchone()
        return row is not None

    # ----------------------------------------------------------------------------------------- writes
    def revoke(self, token_id: str, username: str, expires_ts: float) -> None:
        """Refuse this token from now on (logout). Rows of tokens that expired anyway are dropped here, so the
        table holds at most the tokens of one token lifetime."""
        with immediate_transaction(self._conn, self._lock) as conn:
            conn.execute("DELETE FROM revoked_tokens WHERE expires_ts < ?", (time.time(),))
            conn.execute(
                "INSERT OR IGNORE INTO revoked_tokens (token_id, username, expires_ts) VALUES (?, ?, ?)",
                (token_id, username, expires_ts),
            )

    def add(self, username: str, role: str, password: str) -> User:
        check_username(username)
        stored, parsed, now = _password(password), _role(role), time.time()
        with immediate_transaction(self._conn, self._lock) as conn:
            if conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise ConflictError(
                    f"user '{username}' already exists: change the password with `users passwd {username}` "
                    f"or the role with `users role {username} ROLE`"
                )
            conn.execute(
                "INSERT INTO users (username, role, password_hash, created_ts, updated_ts) VALUES (?, ?, ?, ?, ?)",
                (username, parsed.value, stored, now, now),
            )
        return self._require(username)

    def set_password(self, username: str, password: str) -> User:
        stored = _password(password)
        self._update(username, "password_hash = ?, generation = generation + 1", (stored,))
        return self._require(username)

    def set_role(self, username: str, role: str) -> User:
        self._update(username, "role = ?", (_role(role).value,))
        return self._require(username)

    def remove(self, username: str) -> None:
        with immediate_transaction(self._conn, self._lock) as conn:
            if conn.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 0:
                raise NotFoundError(self._unknown(username))

    def _update(self, username: str, assignments: str, values: tuple[object, ...]) -> None:
        with immediate_transaction(self._conn, self._lock) as conn:
            cursor = conn.execute(
                f"UPDATE users SET {assignments}, updated_ts = ? WHERE username = ?",
                (*values, time.time(), username),
            )
            if cursor.rowcount == 0:
                raise NotFoundError(self._unknown(username))

    def _require(self, username: str) -> User:
        user = self.get(username)
        if user is None:
            raise NotFoundError(self._unknown(username))
        return user

    @staticmethod
    def _unknown(username: str) -> str:
        return f"no user named '{username}'; `annotate-server users list` shows who exists"
