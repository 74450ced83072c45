"""One annotator's session on one image: the label map being edited, the object being clicked, undo/redo.

The label map is edited object by object. While an object is being refined, each model result replaces
the object's previous mask; voxels it gives up return to what they held before the object existed
(kept as a `base` patch), so refining a tumor inside a kidney never punches holes in the kidney. Every
change is recorded as before/after patches of the box it touched, which makes undo/redo exact and cheap,
and is what the delta sent to the client is cut from.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotation_server.imaging.boxes import Box, embed, mask_box, union_box

Voxel = tuple[int, int, int]


@dataclass
class ObjectState:
    """The object under refinement: its label, the prompts so far, its mask and what lay beneath it."""

    label: str
    value: int
    foreground: list[Voxel] = field(default_factory=list)
    background: list[Voxel] = field(default_factory=list)
    box: Box | None = None  # where mask and base patches sit
    mask: np.ndarray | None = None  # bool patch
    base: np.ndarray | None = None  # uint8 patch: the label map before this object touched it


@dataclass
class Change:
    """One undoable step: the label map's box before and after, and the object state around it."""

    box: Box | None
    before: np.ndarray | None
    after: np.ndarray | None
    object_before: ObjectState | None
    object_after: ObjectState | None
    kind: str
    forward_s: float | None = None  # the model's forward pass, when a model made this change (for timings)


@dataclass
class InteractiveSession:
    image_id: str | None
    image_path: str
    shape: tuple[int, int, int]
    labels: dict[str, int]
    label: str
    model: str | None
    client_id: str | None = None
    owner: str | None = None  # the logged-in user who opened it (None while auth is off: anyone may use it)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    mask: np.ndarray = field(init=False)
    current: ObjectState | None = None
    undo_stack: list[Change] = field(default_factory=list)
    redo_stack: list[Change] = field(default_factory=list)
    interactions: int = 0
    # The first model result (box, label-map patch, model, model version): the pre-annotation a save is compared to.
    first_result: tuple[Box, np.ndarray, str, str | None] | None = None
    started_from: dict[str, Any] | None = None  # the saved label the session started from: {tag, version}
    created_ts: float = field(default_factory=time.time)
    last_used_ts: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.mask = np.zeros(self.shape, dtype=np.uint8)

    def __getstate__(self) -> dict[str, Any]:  # spilled to disk without its lock
        state = self.__dict__.copy()
        state.pop("lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- state
    @property
    def version(self) -> int:
        """Position in the history: the number of changes currently applied."""
        return len(self.undo_stack)

    @property
    def nbytes(self) -> int:
        history = sum((c.before.nbytes if c.before is not None else 0) * 2 for c in self.undo_stack + self.redo_stack)
        return int(self.mask.nbytes + history)

    def touch(self) -> None:
        self.last_used_ts = time.time()

    def object_for(self, label: str, new_object: bool) -> ObjectState:
        """The object a prompt refines: the current one, or a new one when the label changes or is asked."""
        if self.current is None or new_object or self.current.label != label:
            return ObjectState(label=label, value=self.labels[label])
        return copy.deepcopy(self.current)

    # ------------------------------------------------------------------------------------------ changes
    def set_object_mask(
        self, obj: ObjectState, mask: np.ndarray, search: Box | None, kind: str, locked: frozenset[int] = frozenset()
    ) -> Change:
        """Replace `obj`'s mask by `mask` (full-size bool, non-zero only inside `search` if given).

        Voxels whose value underneath the object is a `locked` label value are never claimed by it."""
        new_box = mask_box(mask, search)
        box = union_box(obj.box, new_box)
        before_obj = self.current
        if box is None:  # nothing before, nothing now
            obj.box, obj.mask, obj.base = None, None, None
            return self._record(None, None, None, before_obj, obj, kind)
        base = embed(obj.base, obj.box, box, np.uint8, fill=self.mask[box].copy())
        new_mask = mask[box].astype(bool)
        if locked:
            new_mask &= ~np.isin(base, list(locked))
        after = np.where(new_mask, np.uint8(obj.value), base)
        before = self.mask[box].copy()
        self.mask[box] = after
        obj.box, obj.mask, obj.base = box, new_mask, base
        return self._record(box, before, after, before_obj, obj, kind)

    def paint(
        self, region: np.ndarray, box: Box, value: int, kind: str, locked: frozenset[int] = frozenset()
    ) -> Change:
        """Write `value` where `region` (a bool patch at `box`) is set, except on `locked` label values; ends the
        current object."""
        before = self.mask[box].copy()
        if locked:
            region = region & ~np.isin(before, list(locked))
        after = np.where(region, np.uint8(value), before)
        self.mask[box] = after
        return self._record(box, before, after, self.current, None, kind)

    def reset(self, locked: frozenset[int] = frozenset()) -> Change:
        """Clear the mask, except the voxels of `locked` label values."""
        clearable = self.mask if not locked else np.where(np.isin(self.mask, list(locked)), 0, self.mask)
        box = mask_box(clearable)
        if box is None:
            return self._record(None, None, None, self.current, None, "reset")
        before = self.mask[box].copy()
        after = np.where(np.isin(before, list(locked)), before, 0).astype(np.uint8) if locked else np.zeros_like(before)
        self.mask[box] = after
        return self._record(box, before, after, self.current, None, "reset")

    def _record(
        self,
        box: Box | None,
        before: np.ndarray | None,
        after: np.ndarray | None,
        object_before: ObjectState | None,
        object_after: ObjectState | None,
        kind: str,
    ) -> Change:
        change = Change(box, before, after, object_before, object_after, kind)
        self.current = object_after
        self.undo_stack.append(change)
        self.redo_stack.clear()
        self.interactions += 1
        self.touch()
        return change

    def undo(self) -> Change | None:
        if not self.undo_stack:
            return None
        change = self.undo_stack.pop()
        if change.box is not None and change.before is not None:
            self.mask[change.box] = change.before
        self.current = change.object_before
        self.redo_stack.append(change)
        self.touch()
        return change

    def redo(self) -> Change | None:
        if not self.redo_stack:
            return None
        change = self.redo_stack.pop()
        if change.box is not None and change.after is not None:
            self.mask[change.box] = change.after
        self.current = change.object_after
        self.undo_stack.append(change)
        self.touch()
        return change

    def describe(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "image": self.image_id,
            "shape": list(self.shape),
            "labels": self.labels,
            "label": self.label,
            "model": self.model,
            "version": self.version,
            "can_undo": bool(self.undo_stack),
            "can_redo": bool(self.redo_stack),
            "interactions": self.interactions,
            "client_id": self.client_id,
            "owner": self.owner,
            "started_from": self.started_from,
            "created_ts": self.created_ts,
            "last_used_ts": self.last_used_ts,
            "object": None
            if self.current is None
            else {
                "label": self.current.label,
                "foreground": self.current.foreground,
                "background": self.current.background,
            },
        }
