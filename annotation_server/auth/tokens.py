"""Signed, expiring access tokens (JWT, HS256) and the secret they are signed with.

The secret is generated once per data folder and kept beside the user store (0600), so tokens survive a
restart; `ANNOTATE_AUTH_SECRET` gives one explicitly, e.g. for several servers behind one load balancer.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

ALGORITHM = "HS256"
ISSUER = "annotation-server"
SECRET_FILENAME = "token_secret"
MIN_SECRET_LENGTH = 32


class InvalidTokenError(Exception):
    """A token that is malformed, tampered with, expired, or not ours; the message says which."""


@dataclass(frozen=True)
class TokenClaims:
    username: str
    generation: int
    expires_ts: float
    token_id: str  # the `jti` claim: what POST /auth/logout revokes


def load_or_create_secret(path: Path) -> str:
    """The signing secret in `path`, created with 0600 permissions on first use (race-free: O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may have created it a moment ago and still be writing
            secret = path.read_text(encoding="ascii").strip()
            if len(secret) >= MIN_SECRET_LENGTH:
                return secret
            time.sleep(0.02)
        raise ValueError(f"token secret {path} is empty or too short; delete it to have a new one made") from None
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret)
        handle.flush()
        os.fsync(handle.fileno())
    return secret


class TokenSigner:
    def __init__(self, secret: str, lifetime_s: int) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_LENGTH} characters")
        self._secret = secret
        self.lifetime_s = lifetime_s

    def issue(self, username: str, roles: list[str], generation: int, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": ISSUER,
            "sub": username,
            "preferred_username": username,  # where Keycloak-minded tools look for the name
            "realm_access": {"roles": roles},  # informational; the server re-reads roles from the user store
            "gen": generation,
            "jti": secrets.token_urlsafe(16),
            "iat": issued,
            "exp": issued + self.lifetime_s,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # fixed: a token cannot choose its own (e.g. "none") algorithm
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("token signature does not match (tampered, or signed by another server)") from None
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"token not accepted ({exc})") from None
        generation = claims.get("gen")
        if not isinstance(generation, int) or not isinstance(claims["sub"], str) or not isinstance(claims["jti"], str):
            raise InvalidTokenError("token not accepted (claims missing)")
        return TokenClaims(
            username=claims["sub"], generation=generation, expires_ts=float(claims["exp"]), token_id=claims["jti"]
        )
