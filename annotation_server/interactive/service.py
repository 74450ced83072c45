"""Interactive sessions as a service: open, prompt, undo/redo/reset, download, save.

Prompts run in the inference executor (the same bounded queue as /infer/), after taking a turn from the
fair admission (inference/admission.py: least recently served user first, a bounded wait, then 503), so a
burst of clicks neither piles up nor lets one user starve the others. They run on the image cached in
memory; each answer carries only the changed box.
Interactions on one session are serialised by its lock; sessions run in parallel.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from annotation_server.datastore import Datastore, LabelSource, LabelVersion
from annotation_server.errors import ConflictError, InvalidRequestError
from annotation_server.imaging import read_volume
from annotation_server.imaging.boxes import Box, mask_box
from annotation_server.inference.admission import FairAdmission
from annotation_server.inference.engine import InferenceService
from annotation_server.interactive.delta import encode
from annotation_server.interactive.manager import SessionManager
from annotation_server.interactive.prompts import LassoPrompt, Prompt
from annotation_server.interactive.session import Change, InteractiveSession
from annotation_server.interactive.tools import draw_lasso, refine_object


class InteractiveService:
    def __init__(
        self,
        manager: SessionManager,
        inference: InferenceService,
        datastore: Datastore,
        labels: dict[str, int],
        default_model: str | None,
        admission: FairAdmission | None = None,
        label_parts: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.manager = manager
        self.inference = inference
        self.datastore = datastore
        self.labels = {k: v for k, v in labels.items() if v != 0}
        self.default_model = default_model
        self.label_parts = dict(label_parts or {})  # the app's hierarchy, e.g. kidney ⊃ tumor, cyst
        # Clicks take turns per user on the inference thread, each waiting a bounded time (see admission.py).
        self.admission = admission or FairAdmission()

    # ----------------------------------------------------------------------------------------- lifecycle
    def open(
        self,
        image_id: str | None = None,
        upload: Path | None = None,
        model: str | None = None,
        label: str | None = None,
        client_id: str | None = None,
        from_label: str | None = None,
        from_version: int | None = None,
        owner: str | None = None,
    ) -> InteractiveSession:
        """`from_label` (a tag such as `final`, or `original` for a model's pre-annotation; `from_version`, default
        the latest): start from that saved label instead of an empty mask, to correct it."""
        if (image_id is None) == (upload is None):
            raise InvalidRequestError("open a session on a datastore image ('image') or an uploaded file, not both")
        if from_label is not None and image_id is None:
            raise InvalidRequestError("'from_label' needs a datastore image: an uploaded volume has no saved labels")
        path = self.datastore.image_path(image_id) if image_id is not None else upload
        assert path is not None
        volume = self.inference.cache.get(path)  # decoded once, reused by every prompt of the session
        chosen_model = model or self.default_model
        if chosen_model is not None:
            task = self.inference.task(chosen_model)
            self.inference.call(lambda: task.prepare(volume))  # e.g. the image in the network's space, now
        chosen_label = self._label(label or next(iter(self.labels)))
        session = InteractiveSession(
            image_id=image_id,
            image_path=str(path),
            shape=volume.geometry.shape,
            labels=dict(self.labels),
            label=chosen_label,
            model=chosen_model,
            client_id=client_id,
            owner=owner,
        )
        if from_label is not None and image_id is not None:
            self._start_from_label(session, image_id, from_label, from_version)
        self.manager.add(session)
        return session

    def _start_from_label(self, session: InteractiveSession, image_id: str, tag: str, version: int | None) -> None:
        """Seed the session's mask with a saved label. A model's label (e.g. `original` from /infer with
        save_label) counts as the session's pre-annotation, so the final label's effort is measured against it."""
        saved = self.datastore.label_version(image_id, tag, version)
        label = read_volume(self.datastore.label_file(saved))
        array = label.array
        image_geometry = self.datastore.image_geometry(image_id)
        # The same grid means the same shape AND the same voxel-to-world affine: a label of the right shape
        # but flipped or shifted would seed the session with anatomy that is not under it.
        if not label.geometry.matches(image_geometry):
            raise InvalidRequestError(
                f"label '{image_id}' tag '{tag}' v{saved.version} lies on {label.geometry.describe()}, the image "
                f"on {image_geometry.describe()}: save it again on the image's grid"
            )
        if array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise InvalidRequestError(f"label '{image_id}' tag '{tag}' v{saved.version} has values outside 0..255")
        session.mask = np.ascontiguousarray(array, dtype=np.uint8)
        session.started_from = {"tag": saved.tag, "version": saved.version}
        if saved.source.model is not None:
            whole: Box = tuple(slice(0, n) for n in session.shape)  # type: ignore[assignment]
            session.first_result = (whole, session.mask.copy(), saved.source.model, saved.source.model_version)

    def _locked(self, names: list[str], label: str) -> frozenset[int]:
        """The label values a prompt must not change: `locked_labels`, and the parts of the label being drawn
        (the app's `label_parts`: a kidney drawn over its tumor leaves the tumor). The label being drawn cannot
        be locked."""
        for name in names:
            self._label(name)
        if label in names:
            raise InvalidRequestError(
                f"label '{label}' is locked: unlock it (drop it from 'locked_labels') to edit it, or pick another label"
            )
        parts = self.label_parts.get(label, ())
        return frozenset(self.labels[name] for name in (*names, *parts) if name in self.labels)

    def _label(self, label: str) -> str:
        if label not in self.labels:
            raise InvalidRequestError(f"unknown label '{label}'; labels: {', '.join(self.labels)}")
        return label

    # ------------------------------------------------------------------------------------------- prompts
    async def prompt(self, session_id: str, prompt: Prompt, new_object: bool = False) -> dict[str, Any]:
        session = self.manager.get(session_id)
        label = self._label(prompt.label or session.label)
        locked = self._locked(prompt.locked_labels, label)
        model_name = prompt.model or session.model
        started = time.perf_counter()

        queued_s = 0.0

        def work() -> Change:
            nonlocal queued_s
            queued_s = time.perf_counter() - started
            with session.lock:
                volume = self.inference.cache.get(Path(session.image_path))
                if isinstance(prompt, LassoPrompt):
                    return draw_lasso(session, prompt, label, locked)
                if model_name is None:
                    raise InvalidRequestError("no click model for this session: pass 'model' in the prompt")
                task = self.inference.task(model_name)
                began = time.perf_counter()
                change = refine_object(session, volume, task, prompt, label, new_object, locked)
                if session.first_result is None and change.box is not None and change.after is not None:
                    session.first_result = (change.box, change.after, task.name, task.version)  # O(1)
                self.inference.observer(task.name, "prompt", time.perf_counter() - began)
                return change

        async with self.admission.slot(session.owner or session.id):  # the login, or the session with auth off
            change = await self.inference.submit(work)
        session.label = label
        answer = self._answer(session, change, time.perf_counter() - started, model_name)
        answer["timing"] = {"queued_s": round(queued_s, 5), "forward_s": change.forward_s}
        return answer

    async def undo(self, session_id: str) -> dict[str, Any]:
        return await self._history(session_id, "undo")

    async def redo(self, session_id: str) -> dict[str, Any]:
        return await self._history(session_id, "redo")

    async def reset(self, session_id: str, locked_labels: list[str] | None = None) -> dict[str, Any]:
        """Clear the mask; `locked_labels` keep their voxels."""
        for name in locked_labels or []:
            self._label(name)
        locked = frozenset(self.labels[name] for name in locked_labels or [])
        return await self._history(session_id, "reset", locked)

    async def _history(self, session_id: str, action: str, locked: frozenset[int] = frozenset()) -> dict[str, Any]:
        session = self.manager.get(session_id)
        started = time.perf_counter()

        def work() -> Change | None:
            with session.lock:
                if action == "reset":
                    return session.reset(locked)
                return {"undo": session.undo, "redo": session.redo}[action]()

        change = await asyncio.to_thread(work)  # no model: never queued behind inference
        return self._answer(session, change, time.perf_counter() - started, None)

    def _answer(
        self, session: InteractiveSession, change: Change | None, seconds: float, model: str | None
    ) -> dict[str, Any]:
        delta = None
        box = changed_voxels_box(change) if change is not None else None
        if box is not None:
            delta = encode(session.mask[box], tuple(s.start for s in box))
        return {
            "session_id": session.id,
            "version": session.version,
            "label": session.label,
            "kind": change.kind if change else None,
            "delta": delta,
            "model": model,
            "can_undo": bool(session.undo_stack),
            "can_redo": bool(session.redo_stack),
            "seconds": round(seconds, 4),
        }

    # ---------------------------------------------------------------------------------------------- save
    def save(
        self,
        session_id: str,
        tag: str = "final",
        client_id: str | None = None,
        image_id: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> LabelVersion:
        session = self.manager.get(session_id)
        target = session.image_id or image_id
        if target is None:
            raise ConflictError("this session's image is not in the datastore: pass 'image' (an id to add it under)")
        if session.image_id is None:  # an uploaded volume: it joins the datastore with its first label
            source = Path(session.image_path)
            staged = self.datastore.new_upload_path(source.name)
            shutil.copyfile(source, staged)
            self.datastore.add_image(staged, source.name, target, author=client_id or session.client_id or "user")
            session.image_id = target
        with session.lock:
            mask = session.mask.copy()
            model = session.model
            first = session.first_result
        if first is not None:  # the session's first model result is this label's pre-annotation
            box, patch, first_model, first_version = first
            pre = np.zeros(session.shape, dtype=np.uint8)
            pre[box] = patch
            self.inference.result_observer(target, pre, first_model, first_version)
        task = self.inference.tasks.get(model) if model else None
        meta = {
            "interactions": session.interactions,
            "preannotated": first is not None,
            "session_seconds": round(time.time() - session.created_ts, 1),
            "session_id": session.id,
            **({"started_from": session.started_from} if session.started_from else {}),
            **(info or {}),
        }
        return self.datastore.save_label_array(
            target,
            mask,
            tag=tag,
            author=client_id or session.client_id or "user",
            info=meta,
            source=LabelSource(model=model, model_version=task.version if task else None),
            reference=self.inference.cache.get(Path(session.image_path)),
        )


def changed_voxels_box(change: Change) -> Box | None:
    """The bounding box of the voxels a change really altered, inside the box it recorded.

    A refinement records the union of the object's old and new boxes (what undo restores), but a click
    usually moves only part of the boundary; sending just the altered box keeps answers small. Writing it
    into the client's copy gives the same mask, because every voxel outside it is unchanged.
    """
    if change.box is None:
        return None
    if change.before is None or change.after is None:
        return change.box
    local = mask_box(change.before != change.after)
    if local is None:
        return None
    pairs = zip(change.box, local, strict=True)
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in pairs)  # type: ignore[return-value]
