"""Where sessions live: in memory up to a budget, least recently used ones spilled to disk and brought back.

Eviction moves a whole session (label map, object, undo history) to a file in the data folder, so an
annotator who comes back after a coffee finds the work exactly as left; nothing is ever dropped except
by expiry of an abandoned session (and labels already saved are in the datastore regardless).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import OrderedDict
from pathlib import Path

from annotation_server.datastore.atomic import atomic_write_bytes
from annotation_server.errors import NotFoundError
from annotation_server.interactive.session import InteractiveSession

logger = logging.getLogger(__name__)


class SessionManager:
    def __init__(self, spill_dir: Path, budget_bytes: int, expiry_s: float) -> None:
        self.spill_dir = spill_dir
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self.expiry_s = expiry_s
        self._live: OrderedDict[str, InteractiveSession] = OrderedDict()
        self._spilled: dict[str, tuple[Path, str | None, float]] = {}  # id -> (file, image id, last used)
        self._owners: dict[str, str | None] = {}  # id -> who opened it, live or spilled (no restore to ask)
        self._lock = threading.RLock()
        self.evictions = 0
        self.restores = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._live) + len(self._spilled)

    def add(self, session: InteractiveSession) -> None:
        with self._lock:
            self._live[session.id] = session
            self._owners[session.id] = session.owner
            self._enforce_budget(keep=session.id)

    def get(self, session_id: str) -> InteractiveSession:
        with self._lock:
            session = self._live.get(session_id)
            if session is not None:
                self._live.move_to_end(session_id)
                return session
            spilled = self._spilled.pop(session_id, None)
            if spilled is None:
                raise NotFoundError(f"interactive session '{session_id}' not found (closed or expired)")
            path = spilled[0]
            try:
                with path.open("rb") as fh:
                    session = pickle.load(fh)  # our own file, written by _spill
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                logger.error("session %s could not be restored from %s: %s", session_id, path, exc)
                raise NotFoundError(
                    f"interactive session '{session_id}' could not be restored from disk ({type(exc).__name__}); "
                    "open a new session (labels already saved are in the datastore)"
                ) from exc
            path.unlink(missing_ok=True)
            self.restores += 1
            self._live[session_id] = session
            self._enforce_budget(keep=session_id)
            return session

    def owner(self, session_id: str) -> str | None:
        """Who opened the session (None: opened with auth off); NotFoundError when there is no such session."""
        with self._lock:
            if session_id not in self._owners:
                raise NotFoundError(f"interactive session '{session_id}' not found (closed or expired)")
            return self._owners[session_id]

    def remove(self, session_id: str) -> None:
        with self._lock:
            self._owners.pop(session_id, None)
            if self._live.pop(session_id, None) is not None:
                return
            spilled = self._spilled.pop(session_id, None)
            if spilled is None:
                raise NotFoundError(f"interactive session '{session_id}' not found (closed or expired)")
            spilled[0].unlink(missing_ok=True)

    def sessions(self, owner: str | None = None) -> list[dict[str, object]]:
        """Open sessions; only those `owner` opened when given (what a non-admin sees)."""
        with self._lock:
            mine = {i for i, o in self._owners.items() if owner is None or o == owner}
            live = [{**s.describe(), "in_memory": True} for i, s in self._live.items() if i in mine]
            spilled = [
                {"session_id": i, "image": image, "last_used_ts": ts, "in_memory": False}
                for i, (_, image, ts) in self._spilled.items()
                if i in mine
            ]
        return live + spilled

    def locked_images(self) -> set[str]:
        """Images with an open session: next-sample strategies skip them so two annotators never collide."""
        with self._lock:
            ids = {s.image_id for s in self._live.values()} | {image for _, image, _ in self._spilled.values()}
        return {i for i in ids if i}

    def purge_expired(self) -> int:
        now = time.time()
        removed = 0
        with self._lock:
            for session_id in [i for i, s in self._live.items() if now - s.last_used_ts > self.expiry_s]:
                self._live.pop(session_id)
                self._owners.pop(session_id, None)
                removed += 1
            for session_id in [i for i, (_, _, ts) in self._spilled.items() if now - ts > self.expiry_s]:
                self._spilled.pop(session_id)[0].unlink(missing_ok=True)
                self._owners.pop(session_id, None)
                removed += 1
        return removed

    def _enforce_budget(self, keep: str) -> None:
        total = sum(s.nbytes for s in self._live.values())
        for session_id in list(self._live):
            if total <= self.budget_bytes:
                break
            session = self._live[session_id]
            if session_id == keep or session.lock.locked():  # never evict one being worked on right now
                continue
            total -= session.nbytes
            self._spill(session)

    def _spill(self, session: InteractiveSession) -> None:
        path = atomic_write_bytes(
            self.spill_dir / f"{session.id}.pickle", pickle.dumps(session, protocol=pickle.HIGHEST_PROTOCOL), mode=0o600
        )
        self._live.pop(session.id)
        self._spilled[session.id] = (path, session.image_id, session.last_used_ts)
        self.evictions += 1
        logger.info("session %s spilled to disk (memory budget)", session.id)
