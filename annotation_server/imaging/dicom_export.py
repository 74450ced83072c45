"""A Volume written as a CT DICOM series (one uncompressed file per slice), with pydicom.

Used to make DICOM copies of NIfTI studies for tests and benchmarks (the geometry suite writes the real CT
as standard axial, feet-first, coronal and sagittal series). The volume is written as stored: i runs along
a row (columns), j down the rows, k from file to file; ImageOrientationPatient and ImagePositionPatient
come from its affine, so the series reads back onto the same grid and world positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from annotation_server.imaging.volume import RAS_FROM_LPS, Volume


def write_ct_series(
    volume: Volume,
    folder: Path,
    *,
    descending: bool = False,
    tilt_mm_per_slice: float = 0.0,
    drop: tuple[str, ...] = (),
    blank: tuple[str, ...] = (),
) -> list[Path]:
    """Write `volume` (HU) into `folder`; returns the files in the order written (InstanceNumber order).

    `descending` numbers the files from the last slice to the first (a feet-first series read head to
    feet); `tilt_mm_per_slice` moves each slice sideways along the rows (a gantry tilt: positions leave the
    slice normal); `drop` removes attributes and `blank` leaves them empty (Type 2), as messy exports do.
    """
    lps = RAS_FROM_LPS @ volume.geometry.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    col_dir, row_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = list(range(volume.array.shape[2]))
    if descending:
        slices = slices[::-1]
    pixels = np.rint(volume.array).astype(np.int16)
    files = []
    for number, k in enumerate(slices, start=1):
        position = lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3] + col_dir * tilt_mm_per_slice * k
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{number:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "ANNOTATION-SERVER-EXPORT", "Export^Test"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "", ""
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.Manufacturer = "", "O", "1", "annotation-server"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*col_dir, *row_dir)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows, between columns
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.array.shape[1], volume.array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # (i, j) -> (row, column)
        for name in drop:
            if name in ds:
                delattr(ds, name)
        for name in blank:
            setattr(ds, name, None)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
