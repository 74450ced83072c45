"""The canvas structures are painted onto: HU, dominant tissue and label fractions.

Painting is alpha compositing with the shape's occupancy (`new = old + occ * (value - old)`), applied to the
HU *and* the three label fractions (kidney, tumor, cyst). The dominant tissue (occupancy >= 0.5) is kept
per voxel for the texture amplitude and for statistics. Because image and label are
composited with the same occupancies, anything painted over a kidney (a vessel, a rib) removes label in
exactly the voxels where it removes kidney intensity: the label is consistent with the image by design.
"""

from __future__ import annotations

import numpy as np

from annotation_server.phantoms.geometry import BBox, Grid
from annotation_server.phantoms.intensity import HUTable, Tissue

N_CLASSES = 3  # kidney, tumor, cyst (label values 1, 2, 3)


def _intersect(a: BBox, b: BBox) -> BBox | None:
    out = []
    for sa, sb in zip(a, b, strict=True):
        start, stop = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if start >= stop:
            return None
        out.append(slice(start, stop))
    return out[0], out[1], out[2]


def _union(a: BBox | None, b: BBox) -> BBox:
    if a is None:
        return b
    return tuple(slice(min(sa.start, sb.start), max(sa.stop, sb.stop)) for sa, sb in zip(a, b, strict=True))  # type: ignore[return-value]


def _sub(box: BBox, inner: BBox) -> BBox:
    """`inner` (absolute) expressed relative to `box`."""
    return tuple(slice(i.start - b.start, i.stop - b.start) for b, i in zip(box, inner, strict=True))  # type: ignore[return-value]


class Canvas:
    """Float HU volume, a uint8 dominant-tissue map and label fractions tracked inside a growing box."""

    def __init__(self, grid: Grid, hu: HUTable) -> None:
        self.grid = grid
        self.table = hu
        self.hu = np.full(grid.shape, hu[Tissue.AIR], np.float32)
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.frac = np.zeros((N_CLASSES, *grid.shape), np.float32)
        self.label_box: BBox | None = None

    def paint(
        self,
        box: BBox,
        occ: np.ndarray,
        tissue: Tissue,
        *,
        hu: np.ndarray | float | None = None,
        label: int = 0,
        gate: np.ndarray | None = None,
        into: tuple[Tissue, ...] | None = None,
    ) -> np.ndarray:
        """Composite `tissue` with occupancy `occ` over `box`; returns the occupancy actually used.

        `gate` (a full-grid occupancy, e.g. the abdominal cavity) and `into` (tissues that may be replaced)
        restrict where the structure can appear, which is how organs stay inside the body wall and bowel
        loops fill only free fat.
        """
        if gate is not None:
            occ = occ * gate[box]
        if into is not None:
            occ = occ * np.isin(self.tissue[box], np.asarray(into, np.uint8))
        value = self.table[tissue] if hu is None else hu
        view = self.hu[box]
        if occ.shape != view.shape:  # 2-D shapes broadcast along an axis (e.g. the table along z)
            occ = np.broadcast_to(occ, view.shape)
        view += occ * (value - view)
        np.putmask(self.tissue[box], occ >= 0.5, np.uint8(tissue))
        self._label(box, occ, label)
        return occ

    def relabel(self, box: BBox, occ: np.ndarray, label: int) -> None:
        """Raise `label`'s fraction to at least `occ` without changing HU or tissue (the kidney outline over
        its sinus). A max, not a composite: partial-volume voxels at the outline already labelled by the
        parenchyma must not be counted twice (that would dilate the label by a voxel)."""
        self.label_box = _union(self.label_box, box)
        own = self.frac[label - 1][box]
        gain = np.clip(occ - own, 0.0, None)
        for c in range(N_CLASSES):
            if c != label - 1:
                self.frac[c][box] *= 1.0 - gain
        np.maximum(own, occ, out=own)

    def _label(self, box: BBox, occ: np.ndarray, label: int) -> None:
        if label:
            self.label_box = _union(self.label_box, box)
            for c in range(N_CLASSES):
                view = self.frac[c][box]
                if c == label - 1:
                    view += occ * (1.0 - view)
                else:
                    view *= 1.0 - occ
            return
        if self.label_box is None:
            return
        common = _intersect(self.label_box, box)
        if common is None:
            return
        keep = 1.0 - occ[_sub(box, common)]
        for c in range(N_CLASSES):
            self.frac[c][common] *= keep

    def paint_points(self, index: tuple[np.ndarray, np.ndarray, np.ndarray], occ: np.ndarray, tissue: Tissue) -> None:
        """Composite at scattered voxels (thin curved structures such as ribs); never labelled."""
        value = self.table[tissue]
        self.hu[index] += occ * (value - self.hu[index])
        strong = occ >= 0.5
        self.tissue[tuple(i[strong] for i in index)] = np.uint8(tissue)
        if self.label_box is not None:
            for c in range(N_CLASSES):
                self.frac[c][index] *= 1.0 - occ

    def label(self) -> np.ndarray:
        """uint8 label: the class with the largest fraction, background where the union is below one half."""
        out = np.zeros(self.grid.shape, np.uint8)
        if self.label_box is None:
            return out
        box = self.label_box
        frac = self.frac[(slice(None), *box)]
        best = np.argmax(frac, axis=0)
        foreground = frac.sum(axis=0) >= 0.5
        out[box] = np.where(foreground, best + 1, 0).astype(np.uint8)
        return out
