"""Password hashing with the standard library's scrypt (memory-hard, so stolen hashes are slow to crack).

The stored form names its parameters (`scrypt$n$r$p$salt$hash`), so they can be raised later without
invalidating existing passwords.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1  # ~16 MiB and a few tens of ms per check: fine for logins, costly for guessing
SALT_BYTES, KEY_BYTES = 16, 32
MIN_LENGTH = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=KEY_BYTES)


def check_strength(password: str) -> None:
    """Refuse passwords too short to protect patient data (raises ValueError with what to do)."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"password too short: use at least {MIN_LENGTH} characters")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(_derive(password, salt, N, R, P))}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash verifies nothing."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != SCHEME:
            return False
        actual = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(actual, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


@functools.cache
def dummy_hash() -> str:
    """Checked against for unknown usernames, so a login takes as long whether or not the user exists."""
    return hash_password(secrets.token_urlsafe(16))
