"""Test-time copies of the real CT in other orientations, grids and file formats, and world-space comparison.

Everything is generated from `example_ct.nii.gz` (TotalSegmentator's full-body CT, RAS, 3 mm) and its
TotalSegmentator labels (`example_seg_fast_force_split.nii.gz`, kidney = labels 2 + 3) at test time. The
"kidney crop" is slices 82..111 of that CT with the affine moved to match (the shipped `example_ct_sm` keeps
the uncropped affine, so its world coordinates are wrong).

World-space comparison: a label on grid A is brought onto grid B by looking up, for every voxel centre of B,
the A voxel that contains that world point (nearest neighbour). For grids that differ by axis permutations
and flips this lookup is exact, so equality is asserted voxel for voxel.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from scipy import ndimage

from annotation_server.imaging import Geometry, Volume, read_volume
from annotation_server.imaging.dicom_export import write_ct_series

KIDNEY_LABELS = (2, 3)
CROP = slice(82, 112)
# The box around both kidneys (with 9-30 voxels of margin) used for the 48 orientations: 88 x 64 x 52 voxels,
# two 64^3 windows of kidney_seg instead of nine for the 122 x 101 x 30 crop.
KIDNEY_BOX = (slice(14, 102), slice(10, 74), slice(60, 112))


@dataclass(frozen=True)
class Case:
    """An image (array + RAS affine) and its true kidney mask on the same grid."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    affine: np.ndarray

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.image.shape, self.affine)

    @property
    def volume(self) -> Volume:
        return Volume(array=self.image, geometry=self.geometry)

    def save_nifti(self, path: Path) -> Path:
        nib.save(nib.Nifti1Image(self.image, self.affine), str(path))
        return path


def load_full(shared: Path) -> Case:
    folder = shared / "totalsegmentator"
    ct = read_volume(folder / "example_ct.nii.gz")
    labels = read_volume(folder / "example_seg_fast_force_split.nii.gz").array
    return Case("ras_full", ct.array.astype(np.int16), np.isin(labels, KIDNEY_LABELS), ct.geometry.affine)


def crop(case: Case, roi: tuple[slice, slice, slice] = (slice(None), slice(None), CROP), name: str = "crop") -> Case:
    """The sub-volume `roi` with the affine moved so every voxel keeps its world position."""
    start = [s.indices(n)[0] for s, n in zip(roi, case.image.shape, strict=True)]
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ np.asarray(start, dtype=float) + case.affine[:3, 3]
    return Case(name, np.ascontiguousarray(case.image[roi]), np.ascontiguousarray(case.truth[roi]), affine)


def all_axcodes() -> list[str]:
    """The 48 axis-aligned orientations: every permutation of the three axes times every flip."""
    codes = []
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((0, 1), repeat=3):
            codes.append("".join(("RL", "AP", "SI")[axis][flip] for axis, flip in zip(perm, flips, strict=True)))
    return codes


def reorient(case: Case, axcodes: str) -> Case:
    """The same voxels (exactly) stored in `axcodes` order: each voxel keeps its world position."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(case.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    image = np.ascontiguousarray(nib.orientations.apply_orientation(case.image, transform))
    truth = np.ascontiguousarray(nib.orientations.apply_orientation(case.truth, transform))
    affine = case.affine @ nib.orientations.inv_ornt_aff(transform, case.image.shape)
    return Case(f"{case.name}:{axcodes}", image, truth, affine)


def rotate_pose(case: Case, degrees: float, axis: int = 2) -> Case:
    """An oblique acquisition: the same voxels with the patient turned `degrees` about a world axis."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.eye(4)
    a, b = [i for i in range(3) if i != axis]
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    centre = case.affine @ np.array([*(np.asarray(case.image.shape) / 2), 1.0])
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3], back[:3, 3] = -centre[:3], centre[:3]
    return Case(f"{case.name}:rot{degrees:g}", case.image, case.truth, back @ rotation @ shift @ case.affine)


def resample(case: Case, spacing: tuple[float, float, float]) -> Case:
    """The case on an axis-aligned grid of `spacing` mm covering the same box (image linear, truth nearest)."""
    old = np.linalg.norm(case.affine[:3, :3], axis=0)
    shape = tuple(int(np.floor(n * o / s)) for n, o, s in zip(case.image.shape, old, spacing, strict=True))
    scale = np.diag([s / o for s, o in zip(spacing, old, strict=True)] + [1.0])
    # voxel centres: new index x -> old index x * s/o + (s/o - 1) / 2 keeps the box's outer edges in place
    scale[:3, 3] = [(s / o - 1) / 2 for s, o in zip(spacing, old, strict=True)]
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1)
    old_index = scale[:3, :3] @ coords + scale[:3, 3:4]
    image = ndimage.map_coordinates(case.image.astype(np.float32), old_index, order=1, mode="nearest")
    truth = ndimage.map_coordinates(case.truth.astype(np.uint8), old_index, order=0, mode="nearest")
    return Case(
        f"{case.name}:{'x'.join(f'{s:g}' for s in spacing)}mm",
        np.rint(image).astype(np.int16).reshape(shape),
        truth.reshape(shape).astype(bool),
        case.affine @ scale,
    )


def to_grid(label: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """`label` (on `source`) looked up at every voxel centre of `target` (nearest neighbour, world space)."""
    index = np.linalg.inv(source.affine) @ target.affine
    coords = np.indices(target.shape).reshape(3, -1).astype(np.float64)
    mapped = np.rint(index[:3, :3] @ coords + index[:3, 3:4]).astype(np.int64)
    inside = np.all((mapped >= 0) & (mapped < np.asarray(source.shape)[:, None]), axis=0)
    out = np.zeros(coords.shape[1], dtype=label.dtype)
    out[inside] = label[tuple(mapped[:, inside])]
    return out.reshape(target.shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# ------------------------------------------------------------------------------------------------ DICOM series
ACQUISITIONS = {
    # name: (axcodes of the stored volume (i = column, j = row, k = slice normal), file order)
    "axial": ("LPS", "ascending"),  # ImageOrientationPatient 1\0\0\0\1\0: nearly every PACS CT
    "axial_feet_first": ("LPS", "descending"),  # same planes, files (InstanceNumber) from head to feet
    "coronal": ("LIP", "ascending"),  # 1\0\0\0\0\-1
    "sagittal": ("PIR", "ascending"),  # 0\1\0\0\0\-1
}


def write_dicom_series(
    case: Case,
    folder: Path,
    acquisition: str = "axial",
    *,
    tilt_mm_per_slice: float = 0.0,
    drop: tuple[str, ...] = (),
    blank: tuple[str, ...] = (),
) -> Case:
    """`case` as a CT series of `acquisition` (see ACQUISITIONS); returns the case as the series stores it."""
    axcodes, order = ACQUISITIONS[acquisition]
    stored = reorient(case, axcodes)
    write_ct_series(
        stored.volume,
        folder,
        descending=order == "descending",
        tilt_mm_per_slice=tilt_mm_per_slice,
        drop=drop,
        blank=blank,
    )
    return Case(f"{case.name}:dicom-{acquisition}", stored.image, stored.truth, stored.affine)


def seg_world(data: bytes, reference: Geometry) -> np.ndarray:
    """A DICOM SEG decoded by highdicom into its own volume (LPS affine), looked up on `reference`'s grid."""
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    volume = seg.get_volume(combine_segments=True)
    # highdicom: array (slices, rows, columns) = (k, j, i) of its own affine, which maps to LPS millimetres
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(volume.affine)
    return to_grid(np.asarray(volume.array), Geometry(volume.array.shape, ras), reference)


def series_positions(folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The series' headers sorted as OHIF stacks them: ascending along the slice normal."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    headers.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))
    return headers, iop


def ohif_expected(folder: Path, ras_answer: np.ndarray, reference: Geometry) -> np.ndarray:
    """What OHIF should paint: for each pixel of each slice (in OHIF's order), the RAS answer at that point."""
    headers, iop = series_positions(folder)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    c, r = np.meshgrid(np.arange(cols), np.arange(rows))  # (rows, cols)
    to_index = np.linalg.inv(reference.affine)
    frames = []
    for ds in headers:
        origin = np.asarray(ds.ImagePositionPatient, dtype=float)
        lps = origin[:, None, None] + iop[:3, None, None] * c * col_spacing + iop[3:, None, None] * r * row_spacing
        ras = np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])]).reshape(4, -1)
        index = np.rint(to_index @ ras)[:3].astype(int)
        frames.append(ras_answer[tuple(index)].reshape(rows, cols))
    return np.stack(frames)  # (slices, rows, cols): x (column) fastest in C order


def read_bytes(data: bytes, disposition: str = "") -> tuple[np.ndarray, Geometry]:
    """A label file answered by the server (format from its Content-Disposition name) as array + geometry."""
    import tempfile

    ext = next((e for e in (".nii.gz", ".nrrd", ".mha", ".nii") if e in disposition), ".nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"result{ext}"
        path.write_bytes(data)
        volume = read_volume(path)
        return volume.array, volume.geometry
