"""DICOM series (a folder of slices) to a Volume, with pydicom.

Real PACS exports are messy: blank UIDs, an empty SpecificCharacterSet, JPEG 2000 pixel data, slice
spacing that differs from SliceThickness, stray non-image files. So slices are grouped and ordered by
geometry (ImageOrientationPatient / ImagePositionPatient), never by UIDs or file names, and the slice
step comes from the positions themselves.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from annotation_server.errors import CorruptFileError, InvalidRequestError, UnsupportedFormatError
from annotation_server.imaging.headers import ReadLimits, reason
from annotation_server.imaging.volume import RAS_FROM_LPS, Geometry, Volume

logger = logging.getLogger(__name__)

_REQUIRED = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns")
_META_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "StudyDate")


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")


def looks_like_dicom_file(path: Path) -> bool:
    """True when the file carries the DICM preamble marker (cheap, reads 132 bytes)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_series_dir(folder: Path) -> bool:
    """A folder is a DICOM series when its first regular files are DICOM (checking a few keeps scans fast)."""
    if not folder.is_dir():
        return False
    checked = 0
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            if looks_like_dicom_file(path):
                return True
            checked += 1
            if checked >= 3:
                break
    return False


def _read_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    headers = []
    for path in _candidate_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            logger.debug("skipping non-DICOM file %s", path)
            continue
        if all(k in ds for k in _REQUIRED):
            headers.append((path, ds))
    return headers


def _series_key(ds: pydicom.Dataset) -> tuple[Any, ...]:
    # UIDs may be blank after anonymisation, so geometry is part of the key.
    orientation = tuple(round(float(v), 4) for v in ds.ImageOrientationPatient)
    return (str(ds.get("SeriesInstanceUID", "")), orientation, int(ds.Rows), int(ds.Columns))


def _slice_normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    return np.cross(iop[:3], iop[3:])


# A slice may sit this far off the line through the first slice along the normal (mm, plus a fraction of
# its distance from the first slice) before the series counts as tilted: header rounding stays well below.
_TILT_ATOL_MM = 0.05
_TILT_RTOL = 0.005  # ~0.3 degrees


def _refuse_tilt(folder: Path, positions: np.ndarray, normal: np.ndarray) -> None:
    """Refuse a gantry-tilted (or otherwise sheared) series rather than place its slices where they are not.

    Our grid puts slice k at first + k * step * normal. When ImagePositionPatient moves sideways from slice to
    slice (a tilted gantry), that grid is a shear of the real one and every label would be off by up to the
    sideways drift, so the series is refused with what to do instead.
    """
    if len(positions) < 2:
        return
    offsets = positions - positions[0]
    along = offsets @ normal
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if np.any(sideways > _TILT_ATOL_MM + _TILT_RTOL * np.abs(along)):
        degrees = float(np.degrees(np.arctan2(sideways[-1], abs(along[-1]) or 1.0)))
        raise InvalidRequestError(
            f"DICOM series '{folder.name}' is tilted: its slices drift {sideways.max():.1f} mm sideways from the "
            f"slice normal (gantry tilt about {degrees:.1f} degrees, from ImagePositionPatient vs "
            "ImageOrientationPatient). The server does not resample tilted series; resample it to an orthogonal "
            "grid first (e.g. dcm2niix, or 3D Slicer's acquisition geometry regularization) and store that"
        )


def dicom_geometry(folder: Path) -> tuple[Geometry, list[Path], dict[str, Any]]:
    """Geometry of the largest series in `folder`, its slice files in spatial order, and identifying meta."""
    headers = _read_headers(folder)
    if not headers:
        raise UnsupportedFormatError(f"folder '{folder.name}' holds no DICOM image slices with geometry")
    groups: dict[tuple[Any, ...], list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in headers:
        groups[_series_key(ds)].append((path, ds))
    if len(groups) > 1:
        logger.warning("folder %s holds %d series; using the largest", folder, len(groups))
    slices = max(groups.values(), key=len)
    first = slices[0][1]
    normal = _slice_normal(first)
    slices.sort(key=lambda item: float(np.dot(normal, np.asarray(item[1].ImagePositionPatient, dtype=float))))
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices])
    if len(slices) > 1:
        steps = positions[1:] @ normal - positions[:-1] @ normal
        step = float(np.median(steps))
        if step <= 0:
            raise CorruptFileError(f"DICOM series in '{folder.name}' has slices at the same position")
        if np.max(np.abs(steps - step)) > 0.05 * step + 1e-3:
            logger.warning("DICOM series %s has uneven slice spacing (%s); using the median", folder, steps)
    else:
        step = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    _refuse_tilt(folder, positions, normal)
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # i runs along a row (increasing column index)
    lps[:3, 1] = iop[3:] * row_spacing  # j runs down the rows
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0]
    geometry = Geometry((int(first.Columns), int(first.Rows), len(slices)), RAS_FROM_LPS @ lps)
    meta = {k: str(first.get(k, "")) for k in _META_KEYS}
    return geometry, [p for p, _ in slices], meta


def read_dicom_series(folder: Path, limits: ReadLimits | None = None) -> Volume:
    """Read the largest series in `folder`, rescaled to modality units (HU for CT).

    The voxel budget is checked from the headers (rows x columns x slices) before any pixel data is
    decoded, and each slice must decode to exactly its declared rows x columns.
    """
    geometry, files, meta = dicom_geometry(folder)
    (limits or ReadLimits()).check(folder.name, geometry.shape, 2)
    planes = []
    rows_cols = (geometry.shape[1], geometry.shape[0])
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            if int(ds.get("NumberOfFrames", 1) or 1) != 1 or (int(ds.Rows), int(ds.Columns)) != rows_cols:
                raise CorruptFileError(
                    f"DICOM slice '{path.name}' is not one {rows_cols[0]}x{rows_cols[1]} frame like the series"
                )
            pixels = ds.pixel_array
        except CorruptFileError:
            raise
        except Exception as exc:  # pydicom raises many types for undecodable pixel data
            raise CorruptFileError(
                f"cannot decode DICOM slice '{path.name}' in '{folder.name}': {reason(exc, path)}"
            ) from exc
        planes.append(apply_rescale(pixels, ds).T)  # (row, col) -> (i, j)
    array = np.stack(planes, axis=-1)
    if np.all(np.mod(array, 1) == 0) and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    else:
        array = array.astype(np.float32)
    meta["dicom_files"] = [str(p) for p in files]
    return Volume(array=array, geometry=geometry, source_format="dicom", meta=meta)
