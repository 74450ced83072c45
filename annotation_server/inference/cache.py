"""Decoded volumes kept in memory, so repeated requests on one image skip reading and decoding it.

Keyed by path plus size and mtime: a replaced file is never served stale. Bounded by bytes (LRU).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from annotation_server.imaging import Volume, read_volume


def _file_key(path: Path) -> tuple[str, int, float]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime)


class VolumeCache:
    """Thread-safe LRU of decoded volumes with a memory budget."""

    def __init__(self, max_bytes: int, reader: Callable[[Path], Volume] = read_volume) -> None:
        self.max_bytes = max_bytes
        self._reader = reader
        self._entries: OrderedDict[tuple[str, int, float], Volume] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(v.nbytes for v in self._entries.values())

    def get(self, path: Path) -> Volume:
        key = _file_key(path)
        with self._lock:
            volume = self._entries.get(key)
            if volume is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return volume
            self.misses += 1
        volume = self._reader(path)
        self.put(key, volume)
        return volume

    def put(self, key: tuple[str, int, float], volume: Volume) -> None:
        with self._lock:
            self._entries[key] = volume
            self._entries.move_to_end(key)
            total = sum(v.nbytes for v in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                total -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
