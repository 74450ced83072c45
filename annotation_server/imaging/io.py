"""Read and write volumes by extension: NIfTI with nibabel, NRRD/MHA with SimpleITK, DICOM series with pydicom.

NIfTI goes through nibabel because it keeps the qform/sform exactly; writing a result with the source's
header reproduces the source's affine bit for bit. Everything else goes through SimpleITK, converted
between ITK's LPS and our RAS convention in `volume.py`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from annotation_server.errors import CorruptFileError, UnsupportedFormatError
from annotation_server.imaging.dicom import dicom_geometry, read_dicom_series
from annotation_server.imaging.formats import ITK_EXTENSIONS, LABEL_EXTENSIONS, NIFTI_EXTENSIONS, split_extension
from annotation_server.imaging.headers import ReadLimits, display_name, inspect_volume_file, reason
from annotation_server.imaging.volume import Geometry, Volume, affine_from_itk, itk_from_affine

_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    gzip.BadGzipFile,
    RuntimeError,
    nib.filebasedimages.ImageFileError,
)


def _to_3d(array: np.ndarray, name: str) -> np.ndarray:
    """Accept 2-D images and trailing singleton axes (MITK's 2-D tool sends X x Y x 1); refuse real 4-D."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if array.ndim != 3:
        raise UnsupportedFormatError(
            f"'{name}' has shape {array.shape}: only 3-D volumes are supported; send one 3-D image per file"
        )
    return array


def _read_nifti(path: Path) -> Volume:
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise CorruptFileError(
            f"cannot read NIfTI file '{display_name(path)}' (truncated or damaged?): {reason(exc, path)}"
        ) from exc
    array = _to_3d(array, path.name)
    return Volume(array=array, geometry=Geometry(array.shape, img.affine), source_format="nifti", header=img.header)


_ITK_IO = {"nrrd": "NrrdImageIO", "meta": "MetaImageIO"}


def _itk_reader(path: Path, header_format: str) -> sitk.ImageFileReader:
    """A reader forced to the ImageIO whose header we verified (never one SimpleITK picks from the content)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_ITK_IO[header_format])
    reader.SetFileName(str(path))
    return reader


def _read_itk(path: Path, header_format: str) -> Volume:
    try:
        image = _itk_reader(path, header_format).Execute()
    except RuntimeError as exc:
        raise CorruptFileError(
            f"cannot read '{display_name(path)}' (truncated or damaged?): {reason(exc, path)}"
        ) from exc
    if image.GetDimension() not in (2, 3):
        raise UnsupportedFormatError(
            f"'{display_name(path)}' is {image.GetDimension()}-D; only 3-D volumes are supported"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedFormatError(
            f"'{display_name(path)}' has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(overlapping segment layers?); export a single labelmap (one value per voxel) instead"
        )
    array = sitk.GetArrayFromImage(image).T  # ITK arrays are (k, j, i)
    if image.GetDimension() == 2:
        array = array[..., np.newaxis]
        direction = np.eye(3)
        direction[:2, :2] = np.asarray(image.GetDirection()).reshape(2, 2)
        spacing = np.array([*image.GetSpacing(), 1.0])
        origin = np.array([*image.GetOrigin(), 0.0])
    else:
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        spacing = np.asarray(image.GetSpacing())
        origin = np.asarray(image.GetOrigin())
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    affine = affine_from_itk(direction, spacing, origin)
    return Volume(
        array=np.ascontiguousarray(array), geometry=Geometry(array.shape, affine), source_format="itk", meta=meta
    )


def read_volume(path: Path | str, limits: ReadLimits | None = None) -> Volume:
    """Read a 3-D image or label: a NIfTI/NRRD/MHA file, or a folder holding one DICOM series.

    The header is checked first (`imaging.headers`): files naming other files are refused (415) and the
    declared size must fit `limits` (413) before a voxel is read or decompressed.
    """
    path = Path(path)
    limits = limits or ReadLimits()
    if path.is_dir():
        return read_dicom_series(path, limits)
    if not path.is_file():
        raise FileNotFoundError(path)
    _, ext = split_extension(path.name, LABEL_EXTENSIONS)
    if path.stat().st_size == 0:
        raise CorruptFileError(f"'{display_name(path)}' is empty")
    header = inspect_volume_file(path, ext, limits)
    if ext in NIFTI_EXTENSIONS:
        return _read_nifti(path)
    return _read_itk(path, header.format)


def read_geometry(path: Path | str, limits: ReadLimits | None = None) -> Geometry:
    """The grid of an image without reading its voxels (headers only), for fast label validation."""
    path = Path(path)
    limits = limits or ReadLimits()
    if path.is_dir():
        return dicom_geometry(path)[0]
    _, ext = split_extension(path.name, LABEL_EXTENSIONS)
    header = inspect_volume_file(path, ext, limits)
    if ext in NIFTI_EXTENSIONS:
        try:
            img = nib.load(str(path))
        except _READ_ERRORS as exc:
            raise CorruptFileError(f"cannot read NIfTI header of '{display_name(path)}': {reason(exc, path)}") from exc
        shape = img.shape
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) == 2:
            shape = (*shape, 1)
        return Geometry(shape, img.affine)  # type: ignore[arg-type]
    reader = _itk_reader(path, header.format)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptFileError(f"cannot read header of '{display_name(path)}': {reason(exc, path)}") from exc
    if reader.GetDimension() == 2:
        return _read_itk(path, header.format).geometry
    affine = affine_from_itk(
        np.asarray(reader.GetDirection()), np.asarray(reader.GetSpacing()), np.asarray(reader.GetOrigin())
    )
    return Geometry(reader.GetSize(), affine)


def _write_nifti(array: np.ndarray, geometry: Geometry, path: Path, reference: Volume | None) -> None:
    image = nib.Nifti1Image(array, geometry.affine)
    ref_header = reference.header if reference is not None and reference.source_format == "nifti" else None
    if ref_header is not None and reference is not None and reference.geometry.matches(geometry, atol=1e-6):
        # Copy both transforms verbatim so readers preferring either one see the source's exact grid.
        qform, qcode = ref_header.get_qform(coded=True)
        sform, scode = ref_header.get_sform(coded=True)
        image.set_qform(qform if qform is not None else geometry.affine, int(qcode) or 1)
        image.set_sform(sform if sform is not None else geometry.affine, int(scode) or 1)
        image.header.set_xyzt_units(*ref_header.get_xyzt_units())
    else:
        image.set_qform(geometry.affine, 1)
        image.set_sform(geometry.affine, 1)
        image.header.set_xyzt_units("mm", "sec")
    image.header.set_data_dtype(array.dtype)
    image.header["scl_slope"] = 1.0
    image.header["scl_inter"] = 0.0
    nib.save(image, str(path))


def _seg_nrrd_metadata(label_names: dict[str, int], array: np.ndarray) -> dict[str, str]:
    """Segment headers 3D Slicer reads from a .seg.nrrd, so segments arrive named, not as 'Segment_1'."""
    meta: dict[str, str] = {}
    extent = " ".join(f"0 {n - 1}" for n in array.shape)
    for index, (name, value) in enumerate(sorted(label_names.items(), key=lambda kv: kv[1])):
        if value == 0 or name == "background":
            continue
        meta[f"Segment{index}_ID"] = name
        meta[f"Segment{index}_Name"] = name
        meta[f"Segment{index}_LabelValue"] = str(value)
        meta[f"Segment{index}_Layer"] = "0"
        meta[f"Segment{index}_Extent"] = extent
    return meta


def _write_itk(
    array: np.ndarray, geometry: Geometry, path: Path, compress: bool, metadata: dict[str, str] | None
) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    direction, spacing, origin = itk_from_affine(geometry.affine)
    image.SetDirection(direction.flatten().tolist())
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path), useCompression=compress)


def write_volume(
    array: np.ndarray,
    geometry: Geometry,
    path: Path | str,
    reference: Volume | None = None,
    compress: bool = True,
    label_names: dict[str, int] | None = None,
) -> Path:
    """Write `array` on `geometry` to `path`, format chosen by the extension.

    `reference` is the volume the array was computed from; NIfTI outputs reuse its header transforms.
    `label_names` adds segment names where the format can carry them (.seg.nrrd).
    """
    path = Path(path)
    _, ext = split_extension(path.name, LABEL_EXTENSIONS)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    if ext in NIFTI_EXTENSIONS:
        _write_nifti(array, geometry, path, reference)
    elif ext in ITK_EXTENSIONS:
        metadata: dict[str, Any] | None = None
        if ext == ".seg.nrrd" and label_names:
            metadata = _seg_nrrd_metadata(label_names, array)
        _write_itk(array, geometry, path, compress, metadata)
    else:  # pragma: no cover - split_extension already refused it
        raise UnsupportedFormatError(f"cannot write '{display_name(path)}'")
    return path
