"""Session bookkeeping on the client: versions, undo/redo availability, and the effort record.

The server holds the history; the client mirrors what it needs to enable buttons and to tag a save with the
annotator's effort (seconds spent and interactions), which the server's effort report compares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EffortClock:
    """Seconds the annotator actively worked: time between interactions counts, long idle gaps do not."""

    idle_s: float = 120.0
    seconds: float = 0.0
    interactions: int = 0
    _last: float | None = None
    clock: Any = field(default=time.monotonic, repr=False)

    def tick(self) -> None:
        now = self.clock()
        if self._last is not None:
            self.seconds += min(now - self._last, self.idle_s)
        self._last = now
        self.interactions += 1

    def record(self) -> dict[str, Any]:
        """`seconds` is the key the server's effort measures read (it beats the session's wall time);
        the server counts interactions itself, so the client's count (undo/redo included) goes under its own key."""
        return {"seconds": round(self.seconds, 1), "client_interactions": self.interactions}


@dataclass
class SessionBook:
    """One open interactive session as the client sees it."""

    session_id: str
    image: str | None
    shape: tuple[int, int, int]
    labels: dict[str, int]
    label: str
    model: str | None
    version: int = 0
    can_undo: bool = False
    can_redo: bool = False
    locked: set[str] = field(default_factory=set)
    effort: EffortClock = field(default_factory=EffortClock)
    history: list[str] = field(default_factory=list)  # kinds of the answers seen, e.g. "point", "undo"

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SessionBook:
        return cls(
            session_id=state["session_id"],
            image=state.get("image"),
            shape=tuple(state["shape"]),  # type: ignore[arg-type]
            labels=dict(state["labels"]),
            label=state["label"],
            model=state.get("model"),
            version=int(state.get("version", 0)),
        )

    def answered(self, answer: dict[str, Any], kind: str) -> None:
        """Update from a delta answer (prompt, undo, redo or reset)."""
        if answer.get("session_id") != self.session_id:
            raise ValueError("answer belongs to another session: reopen the session")
        self.version = int(answer["version"])
        self.can_undo = bool(answer["can_undo"])
        self.can_redo = bool(answer["can_redo"])
        self.label = answer.get("label") or self.label
        self.history.append(kind)
        self.effort.tick()

    def lock(self, label: str, locked: bool = True) -> None:
        if label not in self.labels:
            raise ValueError(f"unknown label '{label}'; labels: {', '.join(self.labels)}")
        (self.locked.add if locked else self.locked.discard)(label)

    def save_info(self) -> dict[str, Any]:
        return {**self.effort.record(), "client": "slicer-annotationserver"}
