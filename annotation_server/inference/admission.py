"""Fair, bounded admission of clicks to the inference thread.

At 50 clients on 2 cores the old queue (first come, first served, 16 deep) turned 89 % of clicks away and
made the accepted ones wait seconds, and one busy annotator could fill it and starve the others. Now:

- a click waits at most `wait_s` (setting `click_wait_s`, default 2 s) for the inference thread; past it
  the answer is 503 with Retry-After, which is better for a person than a click that lands 8 s later;
- waiting clicks sit in one queue per user (the login, or the session while auth is off) and are served
  round-robin, so a user who fires ten clicks gets one turn per round, like everyone else;
- one user may have at most `per_user` clicks waiting, and all users together `capacity`: beyond that the
  click is refused at once;
- a click that would not get its turn within `wait_s` anyway (the users ahead of it in the rotation times
  the recent time a click holds the thread) is refused at once too, instead of after waiting `wait_s`.

The fast path (the thread is free and nobody waits) is a counter increment: no future, no await.
Everything here runs on the event loop's thread, so it needs no lock. `RoundRobinQueues` holds the policy
alone (no asyncio), so its order can be tested deterministically.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from annotation_server.errors import BusyError

T = TypeVar("T")


class RoundRobinQueues(Generic[T]):
    """Per-user FIFO queues; `pop` takes the oldest item of the user whose turn it is, then moves that user to
    the back of the rotation."""

    def __init__(self, capacity: int, per_user: int) -> None:
        self.capacity = capacity
        self.per_user = per_user
        self._queues: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def users(self) -> int:
        """Users with at least one item waiting (a newcomer is served after one item of each)."""
        return len(self._queues)

    def waiting(self, user: Hashable) -> int:
        queue = self._queues.get(user)
        return len(queue) if queue is not None else 0

    def push(self, user: Hashable, item: T) -> str | None:
        """Queue `item` for `user`; returns why not (a message) when a limit is reached, else None."""
        if self.waiting(user) >= self.per_user:
            return f"you already have {self.per_user} clicks waiting; wait for their answers"
        if self._size >= self.capacity:
            return f"{self._size} clicks from other annotators are waiting"
        self._queues.setdefault(user, deque()).append(item)
        self._size += 1
        return None

    def pop(self) -> T | None:
        """The next item in round-robin order over users (None when nothing waits)."""
        for user in list(self._queues):
            queue = self._queues[user]
            item = queue.popleft()
            self._size -= 1
            if queue:
                self._queues.move_to_end(user)
            else:
                del self._queues[user]
            return item
        return None

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
        self.queues: RoundRobinQueues[asyncio.Future[None]] = RoundRobinQueues(capacity, per_user)
        self.running = 0
        self.refused = 0
        self.timed_out = 0
        self.hold_s = 0.0  # recent time a click holds a slot (moving average), for the expected wait

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.wait_s))

    def _busy(self, why: str) -> BusyError:
        return BusyError(f"the click model is busy ({why}); retry in {self.retry_after_s} s", self.retry_after_s)

    async def acquire(self, user: Hashable) -> None:
        if self.running < self.slots and not self.queues:
            self.running += 1  # the fast path: nothing to wait for
            return
        refusal = self._hopeless(user)
        if refusal is not None:
            self.refused += 1
            raise self._busy(refusal)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refusal = self.queues.push(user, granted)
        if refusal is not None:
            self.refused += 1
            raise self._busy(refusal)
        try:
            await asyncio.wait_for(granted, self.wait_s)
        except TimeoutError:
            if not self.queues.remove(user, granted) and granted.done() and not granted.cancelled():
                return  # handed the slot just as the time ran out: take it
            self.timed_out += 1
            raise self._busy(f"no turn within {self.wait_s:g} s") from None
        except asyncio.CancelledError:  # the client went away while waiting
            if not self.queues.remove(user, granted) and granted.done() and not granted.cancelled():
                self.release()  # it was handed a slot at the last moment: pass it on
            raise

    def expected_wait_s(self, user: Hashable) -> float:
        """Roughly how long a new click of `user` would wait: one turn for each user ahead in the rotation
        (all of them when `user` has nothing waiting, as a newcomer joins the end), spread over the slots."""
        ahead = self.queues.users if self.queues.waiting(user) == 0 else len(self.queues)
        return (ahead + 1) * self.hold_s / self.slots

    def _hopeless(self, user: Hashable) -> str | None:
        expected = self.expected_wait_s(user)
        if expected <= self.wait_s:
            return None
        return f"{len(self.queues)} clicks wait, about {expected:.1f} s for your turn, more than {self.wait_s:g} s"

    def release(self, held_s: float | None = None) -> None:
        """Hand the slot to the next waiting user in turn, or free it. `held_s`: how long it was held."""
        if held_s is not None:
            self.hold_s = held_s if self.hold_s == 0 else 0.8 * self.hold_s + 0.2 * held_s
        while (granted := self.queues.pop()) is not None:
            if not granted.done():
                granted.set_result(None)  # the slot passes on directly: `running` is unchanged
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
