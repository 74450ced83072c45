"""Fair, bounded admission of clicks to the inference thread.

At 50 clients on 2 cores the old queue (first come, first served, 16 deep) turned 89 % of clicks away and
made the accepted ones wait seconds, and one busy annotator could fill it and starve the others. Now:

- a click waits at most `wait_s` (setting `click_wait_s`, default 2 s) for the inference thread; past it
  the answer is 503 with Retry-After, which is better for a person than a click that lands 8 s later;
- waiting clicks are served *least recently served user first* (the login; the session while auth is
  off): a user who just had a turn waits behind everyone who has not, so over a round every contending
  user gets one turn, whatever rate they click at. A plain rotation over the waiting queue is not enough:
  with the queue short (the wait is bounded), whoever asks again first after a turn would win, and a
  non-stop clicker always asks first;
- one user may have at most `per_user` clicks waiting, and all users together `capacity`; when the queue
  is full, a newcomer who was served less recently than someone waiting takes that one's place (the one
  bumped gets the 503), otherwise the newcomer gets it;
- a click that could not get its turn within `wait_s` anyway (the users served before it times the recent
  time a click holds the thread) is refused at once rather than after waiting for nothing.

The fast path (the thread is free and nobody waits) is a counter increment and one dict entry (the user's
last turn): no future, no await. Everything here runs on the event loop's thread, so it needs no lock.
`FairQueue` holds the policy alone (no asyncio, no clock: turns are counted), so its order can be tested
deterministically.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from annotation_server.errors import BusyError

T = TypeVar("T")
NEVER = -1  # the last turn of a user who never had one: first in line


class FairQueue(Generic[T]):
    """Per-user FIFO queues; `pop` serves the user whose last turn is oldest. Turns are numbered, not timed."""

    def __init__(self, capacity: int, per_user: int, remembered_users: int = 10_000) -> None:
        self.capacity = capacity
        self.per_user = per_user
        self.remembered_users = remembered_users
        self._queues: dict[Hashable, deque[T]] = {}
        self._last_turn: dict[Hashable, int] = {}
        self._turns = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def users(self) -> int:
        return len(self._queues)

    def waiting(self, user: Hashable) -> int:
        queue = self._queues.get(user)
        return len(queue) if queue is not None else 0

    def last_turn(self, user: Hashable) -> int:
        return self._last_turn.get(user, NEVER)

    def served(self, user: Hashable) -> None:
        """Count a turn for `user` (also one taken on the fast path, without queueing)."""
        self._turns += 1
        self._last_turn[user] = self._turns
        if len(self._last_turn) > self.remembered_users:  # forget the users longest without a turn
            keep = sorted(self._last_turn.items(), key=lambda kv: kv[1])[len(self._last_turn) // 2 :]
            self._last_turn = dict(keep)

    def ahead_of(self, user: Hashable) -> int:
        """Clicks that would be served before a new one of `user`: those of users whose last turn is older
        (or as old: they were here first), and the user's own waiting ones."""
        mine = self.last_turn(user)
        others = sum(len(q) for u, q in self._queues.items() if u != user and self.last_turn(u) <= mine)
        return others + self.waiting(user)

    def push(self, user: Hashable, item: T) -> tuple[str | None, T | None]:
        """Queue `item` for `user`. Returns (why not, None) when refused, or (None, bumped): `bumped` is the
        waiting item that gave its place up (the newest of the most recently served user) when the queue
        was full."""
        if self.waiting(user) >= self.per_user:
            return f"you already have {self.per_user} clicks waiting; wait for their answers", None
        bumped = None
        if self._size >= self.capacity:
            victim = max(self._queues, key=self.last_turn, default=None)
            if victim is None or self.last_turn(victim) <= self.last_turn(user):
                return f"{self._size} clicks from annotators served longer ago are waiting", None
            bumped = self._queues[victim].pop()
            self._size -= 1
            if not self._queues[victim]:
                del self._queues[victim]
        self._queues.setdefault(user, deque()).append(item)
        self._size += 1
        return None, bumped

    def pop(self) -> tuple[Hashable, T] | None:
        """The next (user, item): the oldest item of the user whose last turn is oldest (None when nothing
        waits). The caller counts the turn with `served` once the item really takes it."""
        if not self._queues:
            return None
        user = min(self._queues, key=self.last_turn)  # ties: the user queued first (dict order)
        queue = self._queues[user]
        item = queue.popleft()
        self._size -= 1
        if not queue:
            del self._queues[user]
        return user, item

    def remove(self, user: Hashable, item: T) -> bool:
        """Take back an item that gave up waiting; False when it was no longer queued."""
        queue = self._queues.get(user)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        self._size -= 1
        if not queue:
            del self._queues[user]
        return True


class FairAdmission:
    """`async with admission.slot(user): ...` holds one of `slots` places on the inference thread."""

    def __init__(self, slots: int = 1, capacity: int = 16, per_user: int = 2, wait_s: float = 2.0) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self.queues: FairQueue[asyncio.Future[None]] = FairQueue(capacity, per_user)
        self.running = 0
        self.refused = 0
        self.timed_out = 0
        self.hold_s = 0.0  # recent time a click holds a slot (moving average), for the expected wait

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.wait_s))

    def _busy(self, why: str) -> BusyError:
        return BusyError(f"the click model is busy ({why}); retry in {self.retry_after_s} s", self.retry_after_s)

    def expected_wait_s(self, user: Hashable) -> float:
        """Roughly how long a new click of `user` would wait: a turn for each click served before it (and the
        one running), spread over the slots."""
        return (self.queues.ahead_of(user) + 1) * self.hold_s / self.slots

    async def acquire(self, user: Hashable) -> None:
        if self.running < self.slots and not self.queues:
            self.running += 1  # the fast path: nothing to wait for
            self.queues.served(user)
            return
        expected = self.expected_wait_s(user)
        if expected > self.wait_s:
            self.refused += 1
            raise self._busy(f"about {expected:.1f} s until your turn, more than {self.wait_s:g} s")
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refusal, bumped = self.queues.push(user, granted)
        if refusal is not None:
            self.refused += 1
            raise self._busy(refusal)
        if bumped is not None and not bumped.done():
            self.refused += 1
            bumped.set_exception(self._busy("your place went to an annotator served longer ago"))
        try:
            await asyncio.wait_for(granted, self.wait_s)
        except TimeoutError:
            if not self.queues.remove(user, granted) and self._handed(granted):
                return  # handed the slot just as the time ran out: take it
            self.timed_out += 1
            raise self._busy(f"no turn within {self.wait_s:g} s") from None
        except asyncio.CancelledError:  # the client went away while waiting
            if not self.queues.remove(user, granted) and self._handed(granted):
                self.release()  # it was handed a slot at the last moment: pass it on
            raise

    @staticmethod
    def _handed(granted: asyncio.Future[None]) -> bool:
        """Whether `granted` was given the slot (not cancelled, not bumped with an error)."""
        return granted.done() and not granted.cancelled() and granted.exception() is None

    def release(self, held_s: float | None = None) -> None:
        """Hand the slot to the next waiting user in turn, or free it. `held_s`: how long it was held."""
        if held_s is not None:
            self.hold_s = held_s if self.hold_s == 0 else 0.8 * self.hold_s + 0.2 * held_s
        while (turn := self.queues.pop()) is not None:
            user, granted = turn
            if not granted.done():  # not one that gave up or was bumped a moment ago
                granted.set_result(None)  # the slot passes on directly: `running` is unchanged
                self.queues.served(user)
                return
        self.running -= 1

    @asynccontextmanager
    async def slot(self, user: Hashable) -> AsyncIterator[None]:
        await self.acquire(user)
        began = time.perf_counter()
        try:
            yield
        finally:
            self.release(time.perf_counter() - began)
