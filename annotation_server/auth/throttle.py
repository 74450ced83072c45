"""Login throttling per (user name, client address), with delays that grow with each further failure.

Passwords are scrypt-hashed, which slows each guess, but nothing stopped a script from guessing all day.
The first version locked a *name* out from everywhere after 5 failures (and an address after 20), so a
stranger could lock the admin out, and one busy NAT address locked out everyone behind it, right password
included. Now each (name, address) pair has its own count: after `free_failures` wrong passwords the next
attempt from that pair must wait `base_delay_s`, then twice that, and so on up to `max_delay_s`. Guessing
stays slow for the attacker, while the same user from another address (their own workstation) and other
users behind the same address log in as usual. A successful login clears the pair; a pair forgotten for
`forget_after_s` starts over. In memory: a restart forgets, which is fine for a brake on guessing; the
number of pairs kept is bounded, so a flood of made-up names cannot grow it without limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


class TooManyAttemptsError(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Pair:
    failures: int = 0
    last_failure: float = 0.0
    not_before: float = 0.0  # no attempt from this pair is checked before this time


class LoginThrottle:
    def __init__(
        self,
        free_failures: int = 3,
        base_delay_s: float = 1.0,
        max_delay_s: float = 300.0,
        forget_after_s: float = 3600.0,
        max_pairs: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_pairs = max_pairs
        self._clock = clock
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()  # least recently failed first
        self._lock = threading.Lock()

    def delay_after(self, failures: int) -> float:
        """Seconds an attempt must wait after `failures` consecutive wrong passwords from one pair."""
        if failures <= self.free_failures:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2 ** (failures - self.free_failures - 1))

    def _pair(self, key: tuple[str, str], now: float) -> _Pair | None:
        pair = self._pairs.get(key)
        if pair is not None and now - pair.last_failure > self.forget_after_s:
            del self._pairs[key]
            return None
        return pair

    def check(self, username: str, address: str) -> None:
        """Raise TooManyAttemptsError when this name has failed from this address too recently."""
        now = self._clock()
        with self._lock:
            pair = self._pair((username, address), now)
            if pair is None or now >= pair.not_before:
                return
            wait = max(1, int(pair.not_before - now + 0.999))
        raise TooManyAttemptsError(
            f"{pair.failures} failed logins for user '{username}' from {address}; wait {wait} s before trying "
            "again (each further failure doubles the wait), or ask the site admin to reset the password with "
            "`annotate-server users passwd NAME`",
            wait,
        )

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        key = (username, address)
        with self._lock:
            pair = self._pair(key, now) or _Pair()
            pair.failures += 1
            pair.last_failure = now
            pair.not_before = now + self.delay_after(pair.failures)
            self._pairs[key] = pair
            self._pairs.move_to_end(key)
            while len(self._pairs) > self.max_pairs:
                self._pairs.popitem(last=False)

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((username, address), None)
