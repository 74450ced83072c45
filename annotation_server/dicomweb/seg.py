"""DICOM SEG from a labelmap on a DICOM series' grid (highdicom), so PACS viewers such as OHIF show labels.

The labelmap is indexed (i, j, k) = (column, row, slice in spatial order), as `imaging.dicom` reads a
series; frame k of the SEG therefore is `array[:, :, k].T` and references the k-th slice sorted along the
slice normal. Segment numbers are the label values themselves (1..max), so decoding a SEG with
`combine_segments=True` gives back exactly the saved labelmap. Only slice headers are read: a SEG never
needs the CT pixels.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from annotation_server import __version__
from annotation_server.errors import InvalidRequestError
from annotation_server.imaging import Geometry
from annotation_server.imaging.dicom import dicom_geometry

logger = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
UID_NAMESPACE = "annotation-server"

# Coded meaning of label names we know; anything else is described as generic tissue with its own name.
_KNOWN: dict[str, tuple[Code, Code]] = {
    "kidney": (codes.SCT.Organ, codes.SCT.Kidney),
    "liver": (codes.SCT.Organ, codes.SCT.Liver),
    "spleen": (codes.SCT.Organ, codes.SCT.Spleen),
    "tumor": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    "tumour": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    "cyst": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst),
}


@dataclass(frozen=True)
class SegOrigin:
    """Who made the labelmap: a model alone (AUTOMATIC), a person correcting a model, or a person."""

    model: str | None = None
    model_version: str | None = None
    manual: bool = True

    def algorithm(self) -> tuple[hd.seg.SegmentAlgorithmTypeValues, hd.AlgorithmIdentificationSequence | None]:
        if self.model is None:
            return hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
        values = hd.seg.SegmentAlgorithmTypeValues
        kind = values.SEMIAUTOMATIC if self.manual else values.AUTOMATIC
        identification = hd.AlgorithmIdentificationSequence(
            name=self.model, version=self.model_version or "unknown", family=codes.cid7162.ArtificialIntelligence
        )
        return kind, identification


def stable_uid(*parts: str) -> str:
    """A UID derived from `parts` (same parts, same UID), so a retried write-back cannot duplicate a SEG."""
    return pydicom.uid.generate_uid(entropy_srcs=[UID_NAMESPACE, *parts])


def read_source_headers(folder: Path) -> tuple[Geometry, list[pydicom.Dataset]]:
    """The series' grid and its slice headers in the order of the volume's k axis, ready for highdicom."""
    geometry, files, _ = dicom_geometry(folder)
    headers = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
        headers.append(ds)
    _complete_type2(headers, geometry, folder)
    blank = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not headers[0].get(k)]
    if blank:
        raise InvalidRequestError(
            f"the DICOM series '{folder.name}' has blank {', '.join(blank)} (an anonymised export), so a DICOM SEG "
            "could not reference it; store the series in a PACS (which assigns UIDs) or use output=image"
        )
    return geometry, headers


# Type 2 attributes of the modules a SEG copies from its source (Patient, General Study): they must be
# present but may be empty, and real exports drop them. An empty value is what DICOM itself prescribes.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _complete_type2(headers: list[pydicom.Dataset], geometry: Geometry, folder: Path) -> None:
    """Fill what a SEG needs from the source but the export left out (in memory only; the files are untouched).

    - missing Type 2 patient/study attributes become empty (their DICOM meaning: unknown);
    - a missing or empty SliceThickness becomes the slice spacing measured from the positions (the SEG's
      pixel measures need a value; the grid itself never used SliceThickness);
    - a missing or empty FrameOfReferenceUID (Type 1 in a SEG) becomes a UID derived from the series UID,
      the same for every slice and every SEG of this series, so a viewer still finds them in one frame.
    """
    step = float(geometry.spacing[2])
    series_uid = str(headers[0].get("SeriesInstanceUID", "") or folder.name)
    frame = next((str(ds.FrameOfReferenceUID) for ds in headers if ds.get("FrameOfReferenceUID")), "")
    if not frame:
        frame = stable_uid("frame-of-reference", series_uid)
        logger.warning("DICOM series %s has no FrameOfReferenceUID; its SEG uses the derived %s", folder, frame)
    for ds in headers:
        for name in _TYPE2_COPIED:
            if name not in ds:
                setattr(ds, name, "")
        if not ds.get("SliceThickness"):
            ds.SliceThickness = round(step, 6)
        if not ds.get("FrameOfReferenceUID"):
            ds.FrameOfReferenceUID = frame


def _descriptions(values: list[int], names: Mapping[str, int], origin: SegOrigin) -> list[hd.seg.SegmentDescription]:
    by_value = {int(v): n for n, v in names.items() if int(v) > 0 and n.lower() != "background"}
    algorithm_type, identification = origin.algorithm()
    described = []
    for number in range(1, max(values, default=0) + 1):
        name = by_value.get(number, f"label {number}")
        category, kind = _KNOWN.get(name.lower(), (codes.SCT.Tissue, codes.SCT.Tissue))
        described.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=algorithm_type,
                algorithm_identification=identification,
            )
        )
    return described


def build_seg(
    array: np.ndarray,
    geometry: Geometry,
    folder: Path,
    label_names: Mapping[str, int],
    origin: SegOrigin,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
    series_description: str = "annotation-server label",
) -> hd.seg.Segmentation:
    """A BINARY SEG of `array` (on the series' grid) referencing the DICOM series in `folder`."""
    source_geometry, headers = read_source_headers(folder)
    if not geometry.matches(source_geometry) or tuple(array.shape) != source_geometry.shape:
        raise InvalidRequestError(
            f"label grid ({geometry.describe()}) differs from the DICOM series ({source_geometry.describe()}); "
            "a DICOM SEG must lie on its source series"
        )
    values = np.asarray(array)
    if values.dtype.kind == "f":
        values = np.rint(values)
    if values.size and values.min() < 0:
        raise InvalidRequestError("label has negative values; a DICOM SEG holds segments numbered from 1")
    top = int(values.max(initial=0))
    names = dict(label_names)
    top = max(top, *(int(v) for v in names.values()), 1)
    frames = np.ascontiguousarray(np.transpose(values, (2, 1, 0))).astype(np.uint8 if top < 256 else np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-component PatientName etc. in real headers
        try:
            return _segmentation(
                headers, frames, top, names, origin, series_uid, sop_uid, instance_number, series_description
            )
        except (ValueError, KeyError, AttributeError, TypeError) as exc:  # highdicom's verdict on the headers
            logger.warning("DICOM SEG for %s refused by highdicom: %r", folder, exc)
            raise InvalidRequestError(
                f"the DICOM series '{folder.name}' cannot be referenced by a DICOM SEG: {exc}. Fix that attribute "
                "in the series (or store it in a PACS that completes it), or ask for output=image"
            ) from exc


def _segmentation(
    headers: list[pydicom.Dataset],
    frames: np.ndarray,
    top: int,
    names: dict[str, int],
    origin: SegOrigin,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    series_description: str,
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=headers,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(list(range(1, top + 1)), names, origin),
        series_instance_uid=series_uid,
        series_number=9901,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="annotation-server",
        manufacturer_model_name="annotation-server",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description[:64],
    )


def decode_seg(seg: pydicom.Dataset, source_uids: list[str]) -> np.ndarray:
    """A SEG back to an (n_slices, rows, cols) labelmap in the order of `source_uids` (tests, round trips)."""
    parsed = hd.seg.Segmentation.from_dataset(seg)
    return np.asarray(parsed.get_pixels_by_source_instance(source_uids, combine_segments=True))


def seg_for_result(
    folder: Path, result: Path, label_names: Mapping[str, int], model: str, model_version: str | None
) -> bytes:
    """`/infer?output=dicom_seg`: the model's result on the series in `folder` as DICOM SEG file bytes."""
    from annotation_server.imaging import read_volume

    volume = read_volume(result)
    seg = build_seg(
        volume.array,
        volume.geometry,
        folder,
        label_names,
        SegOrigin(model=model, model_version=model_version, manual=False),
        series_uid=hd.UID(),
        sop_uid=hd.UID(),
        series_description=f"{model} result"[:64],
    )
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
