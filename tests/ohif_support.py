"""Helpers for the OHIF test: the embedded sample CT written as a standard DICOM CT series (LPS, axial)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_series_from_nifti(path: Path, study_time: str = "093015") -> list[pydicom.Dataset]:
    """One CT instance per axial slice, as a scanner writes them: rows along +x (L), columns along +y (P)."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    array = sitk.GetArrayFromImage(image).astype(np.int16)  # (slices, rows, columns)
    spacing = image.GetSpacing()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(array.shape[0]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "OHIF^Test", "OHIF-1", "O", "19700101"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20250101", study_time, "1", "A1"
        ds.StudyDescription, ds.SeriesDescription = "sample abdomen CT", "axial 3 mm"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.ReferringPhysicianName = ""
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.ascontiguousarray(array[k]).tobytes()
        datasets.append(ds)
    return datasets


def lps_affine(datasets: list[pydicom.Dataset]) -> np.ndarray:
    """Voxel (column, row, slice) -> LPS mm of the series (slices sorted along the normal)."""
    first = datasets[0]
    row, col = np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:])
    normal = np.cross(row, col)
    ordered = sorted(datasets, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    step = np.asarray(ordered[1].ImagePositionPatient, float) - np.asarray(ordered[0].ImagePositionPatient, float)
    affine = np.eye(4)
    affine[:3, 0] = row * float(first.PixelSpacing[1])
    affine[:3, 1] = col * float(first.PixelSpacing[0])
    affine[:3, 2] = step
    affine[:3, 3] = np.asarray(ordered[0].ImagePositionPatient, float)
    return affine
