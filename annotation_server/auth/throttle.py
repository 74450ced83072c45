"""Login throttling: a few wrong passwords in a row, and that user name (or that address) must wait.

Passwords are scrypt-hashed, which slows each guess, but nothing stopped a script from guessing all day.
Failures are counted per user name and per client address in a sliding window; past the limit a login is
refused with 429 and Retry-After, even with the right password, until the oldest failure leaves the
window. A successful login clears its user name's failures. In memory: a restart forgets, which is fine
for a brake on guessing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class TooManyAttemptsError(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LoginThrottle:
    def __init__(
        self,
        per_user: int = 5,
        per_address: int = 20,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"user": per_user, "address": per_address}
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def check(self, username: str, address: str) -> None:
        """Raise TooManyAttemptsError if this user name or address has failed too often lately."""
        now = self._clock()
        with self._lock:
            for kind, value in (("user", username), ("address", address)):
                failures = self._recent((kind, value), now)
                if len(failures) >= self.limits[kind]:
                    wait = max(1, int(failures[0] + self.window_s - now + 0.999))
                    what = f"user '{username}'" if kind == "user" else f"address {address}"
                    raise TooManyAttemptsError(
                        f"too many failed logins for {what}; wait {wait} s, or ask the site admin to reset the "
                        "password with `annotate-server users passwd NAME`",
                        wait,
                    )

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (("user", username), ("address", address)):
                self._recent(key, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(("user", username), None)
