"""Who was offered which image: so several annotators asking for the next sample get different images.

Without this, a ranking strategy hands its top image to everyone who asks until someone saves a label, and
two people annotate the same study. An offered image is reserved for the annotator it went to until:
- they (or anyone) save a `final` label for it (strategies skip labeled images anyway),
- they ask for another sample (asking again means they moved on: the image is offered to others again),
- the reservation expires (`ttl_s`: someone who went home does not hold an image for ever).

Reservations live in memory: after a restart every image can be offered again, which is the safe side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reservation:
    image_id: str
    annotator: str
    expires_ts: float


class Reservations:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_image: dict[str, Reservation] = {}
        self._lock = threading.Lock()

    def _expire(self) -> None:
        now = self._clock()
        for image_id in [i for i, r in self._by_image.items() if r.expires_ts <= now]:
            del self._by_image[image_id]

    def held_by_others(self, annotator: str) -> set[str]:
        """Images reserved for someone else right now: not to be offered to `annotator`."""
        with self._lock:
            self._expire()
            return {i for i, r in self._by_image.items() if r.annotator != annotator}

    def release_for(self, annotator: str) -> set[str]:
        """Drop what `annotator` holds (they are asking for another image); returns the released image ids."""
        with self._lock:
            self._expire()
            mine = {i for i, r in self._by_image.items() if r.annotator == annotator}
            for image_id in mine:
                del self._by_image[image_id]
            return mine

    def reserve(self, image_id: str, annotator: str) -> Reservation:
        with self._lock:
            reservation = Reservation(image_id, annotator, self._clock() + self.ttl_s)
            self._by_image[image_id] = reservation
            return reservation

    def snapshot(self) -> list[Reservation]:
        with self._lock:
            self._expire()
            return list(self._by_image.values())
