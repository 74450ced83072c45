"""Turning a prompt into a change of the session's label map.

Points, boxes and scribbles refine the current object with a click model (any `deepgrow`-type task:
the learned click model or the region-growing tool); boxes and scribbles become clicks plus hard
constraints (nothing outside the box; painted voxels in or out). A lasso is drawn directly, no model.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as fill_polygon
from skimage.segmentation import flood

from annotation_server.errors import InvalidRequestError
from annotation_server.imaging import Volume
from annotation_server.imaging.boxes import Box, mask_box, union_box
from annotation_server.inference.click_memory import keep_asked_change
from annotation_server.inference.params import InferParams, check_points
from annotation_server.inference.task import InferTask
from annotation_server.interactive.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt
from annotation_server.interactive.session import Change, InteractiveSession, ObjectState

MAX_SCRIBBLE_CLICKS = 8


def _scribble_clicks(voxels: np.ndarray) -> list[tuple[int, int, int]]:
    """A few well-spread voxels of a stroke as clicks (models take points; the stroke itself is enforced)."""
    if len(voxels) <= MAX_SCRIBBLE_CLICKS:
        chosen = voxels
    else:
        chosen = voxels[np.linspace(0, len(voxels) - 1, MAX_SCRIBBLE_CLICKS).round().astype(int)]
    return [tuple(int(v) for v in p) for p in chosen]  # type: ignore[misc]


def _roi(extra: dict, shape: tuple[int, ...]) -> Box | None:
    roi = extra.get("roi")
    if not roi:
        return None
    return tuple(slice(max(0, int(a)), min(n, int(b))) for (a, b), n in zip(roi, shape, strict=True))  # type: ignore[return-value]


def refine_object(
    session: InteractiveSession,
    volume: Volume,
    task: InferTask,
    prompt: PointPrompt | BoxPrompt | ScribblePrompt,
    label: str,
    new_object: bool,
    locked: frozenset[int] = frozenset(),
) -> Change:
    """Add the prompt to the object's clicks, run the click model, and replace the object's mask."""
    if not task.is_interactive:
        raise InvalidRequestError(f"model '{task.name}' is not a click model (type {task.type}); use a deepgrow model")
    obj: ObjectState = session.object_for(label, new_object)
    shape = session.shape
    painted: np.ndarray | None = None  # scribble voxels, always in (or out of) the result
    clip: Box | None = None
    if isinstance(prompt, PointPrompt):
        check_points([prompt.point], shape, "prompt")
        (obj.foreground if prompt.positive else obj.background).append(tuple(prompt.point))
    elif isinstance(prompt, BoxPrompt):
        lo, hi = prompt.bounds()
        check_points([tuple(lo), tuple(hi)], shape, "box corner")
        obj.foreground.append(tuple(int(v) for v in (lo + hi) // 2))
        clip = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))  # type: ignore[assignment]
    else:
        voxels = prompt.voxels(shape)
        if len(voxels) == 0:
            raise InvalidRequestError("the scribble paints no voxel")
        check_points([tuple(voxels.min(axis=0)), tuple(voxels.max(axis=0))], shape, "scribble")
        (obj.foreground if prompt.positive else obj.background).extend(_scribble_clicks(voxels))
        painted = voxels
    if isinstance(prompt, PointPrompt) and not prompt.positive and obj.mask is None:
        adopt_labeled_blob(session, obj, tuple(prompt.point))  # a correction of a saved (or finished) blob
    if not obj.foreground:
        raise InvalidRequestError(
            "start an object with a foreground prompt (positive: true), or click background on a voxel that "
            "already has this label to correct that blob"
        )
    earlier = obj.mask is not None  # a correction of an existing object, not its first prompt
    result = task.infer(volume, InferParams(foreground=obj.foreground, background=obj.background, label=label))
    # The task's mask is a fresh full-size array: edit it in place and only inside boxes, never copy it whole,
    # so a click costs the same on a 512 x 512 x 300 scan as on a small one.
    mask = result.mask
    roi = _roi(result.extra, shape)
    search = roi
    if isinstance(prompt, PointPrompt) and prompt.scope == "local" and earlier:
        spacing = volume.geometry.spacing
        search = keep_change_at_click(obj, mask, roi, tuple(prompt.point), prompt.positive, spacing)
    if clip is not None:  # nothing outside the box the annotator drew
        inside = mask[clip].copy()
        mask[roi if roi is not None else ...] = 0
        mask[clip] = inside
        search = clip
    if painted is not None:
        mask[tuple(painted.T)] = 1 if isinstance(prompt, ScribblePrompt) and prompt.positive else 0
        painted_box = tuple(
            slice(int(a), int(b) + 1) for a, b in zip(painted.min(axis=0), painted.max(axis=0), strict=True)
        )
        search = union_box(search, painted_box) if search is not None else None  # type: ignore[arg-type]
    change = session.set_object_mask(obj, mask, search, prompt.type, locked)
    forward_s = result.extra.get("forward_s")
    change.forward_s = float(forward_s) if isinstance(forward_s, int | float) else None
    return change


def adopt_labeled_blob(session: InteractiveSession, obj: ObjectState, click: tuple[int, ...]) -> None:
    """Make the blob of `obj`'s label under a background click the object being refined.

    Without this, a background click needs an object started by a foreground click in this session, so a
    label the session started from (`from_label`), or an object already finished, could only be erased
    with the lasso. The blob is the 26-connected region of the label's value around the click; its foreground
    seed is the blob's voxel nearest its centroid; what lay beneath it is unknown, so background.
    """
    value = session.labels[obj.label]
    if session.mask[click] != value:
        return
    blob = flood(session.mask == value, click, connectivity=3)
    box = mask_box(blob)
    if box is None:
        return
    inside = blob[box]
    voxels = np.argwhere(inside)
    seed = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
    obj.box, obj.mask = box, inside.copy()
    obj.base = np.where(inside, np.uint8(0), session.mask[box])
    obj.foreground.append(tuple(int(v + b.start) for v, b in zip(seed, box, strict=True)))  # type: ignore[arg-type]


def keep_change_at_click(
    obj: ObjectState,
    mask: np.ndarray,
    roi: Box | None,
    click: tuple[int, ...],
    positive: bool,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> Box | None:
    """Confine a corrective click's effect to the change it asked for (`keep_asked_change`, the rule `/infer`
    uses too); the rest of the model's answer goes back to the object's previous mask. Returns the box to
    search afterwards. `mask` (full size) is edited in place, inside boxes only, so a click costs the same on a
    large scan as on a small one."""
    if obj.box is None or obj.mask is None:
        return roi
    opposite = obj.background if positive else obj.foreground
    box = keep_asked_change(obj.box, obj.mask, mask, click, positive, opposite, spacing, search=roi)
    return box  # every non-zero voxel of `mask` now lies in `box`: a smaller search than the roi


def draw_lasso(
    session: InteractiveSession, prompt: LassoPrompt, label: str, locked: frozenset[int] = frozenset()
) -> Change:
    """Fill the polygon on its slice with the label (or erase it when `positive` is false)."""
    shape = session.shape
    if prompt.index >= shape[prompt.axis]:
        size = shape[prompt.axis]
        raise InvalidRequestError(f"lasso slice {prompt.index} is outside axis {prompt.axis} (size {size})")
    plane = tuple(n for a, n in enumerate(shape) if a != prompt.axis)
    vertices = np.asarray(prompt.polygon, dtype=float)
    rows, cols = fill_polygon(vertices[:, 0], vertices[:, 1], shape=plane)
    if len(rows) == 0:
        raise InvalidRequestError("the lasso polygon encloses no voxel of the slice")
    region = np.zeros(plane, dtype=bool)
    region[rows, cols] = True
    box = [slice(None)] * 3
    box[prompt.axis] = slice(prompt.index, prompt.index + 1)
    patch_box: Box = tuple(box)  # type: ignore[assignment]
    full_box = tuple(slice(0, n) if s == slice(None) else s for s, n in zip(patch_box, shape, strict=True))
    region3 = np.expand_dims(region, axis=prompt.axis)
    value = session.labels[label] if prompt.positive else 0
    return session.paint(region3, full_box, value, "lasso", locked)  # type: ignore[arg-type]
