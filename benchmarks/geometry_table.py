"""Issue 11's table: kidney_seg through `POST /infer` on the full-body real CT stored in other orders.

Every row goes through the API in process (the kidney app, a studies folder written here): NIfTI in RAS
(as shipped), PLS, SRA (a 3-cycle of the axes), LPS and RPI; the CT written as a standard axial DICOM
series (answer as NIfTI, as DICOM SEG decoded by highdicom, and as OHIF v3 reads it: raw NRRD bytes
poured into the series, x fastest, slices ascending along the normal). Each answer is brought back to
the RAS grid through its own geometry (world space) and scored against TotalSegmentator's kidneys
(labels 2 + 3); "agrees" = voxel-for-voxel equal to the RAS answer there.

    python benchmarks/geometry_table.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from fastapi.testclient import TestClient

from annotation_server.app_spec import load_app
from annotation_server.imaging import Geometry, Volume, read_volume, write_volume
from annotation_server.imaging.dicom_export import write_ct_series
from annotation_server.server import create_app
from annotation_server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
OHIF_PARAMS = {
    "result_extension": ".nrrd",
    "result_dtype": "uint8",
    "result_compress": False,
    "restore_label_idx": False,
}


def reoriented(volume: Volume, axcodes: str) -> Volume:
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(volume.geometry.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    array = np.ascontiguousarray(nib.orientations.apply_orientation(volume.array, transform))
    affine = volume.geometry.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape)
    return Volume(array=array, geometry=Geometry(array.shape, affine))


def to_grid(label: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Nearest-neighbour lookup of `label` at the world position of every voxel of `target`."""
    index = np.linalg.inv(source.affine) @ target.affine
    coords = np.indices(target.shape).reshape(3, -1).astype(np.float64)
    mapped = np.rint(index[:3, :3] @ coords + index[:3, 3:4]).astype(np.int64)
    inside = np.all((mapped >= 0) & (mapped < np.asarray(source.shape)[:, None]), axis=0)
    out = np.zeros(coords.shape[1], dtype=label.dtype)
    out[inside] = label[tuple(mapped[:, inside])]
    return out.reshape(target.shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def read_answer(data: bytes, ext: str) -> tuple[np.ndarray, Geometry]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"answer{ext}"
        path.write_bytes(data)
        volume = read_volume(path)
        return volume.array, volume.geometry


def seg_answer(data: bytes) -> tuple[np.ndarray, Geometry]:
    volume = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(data))).get_volume(combine_segments=True)
    return np.asarray(volume.array), Geometry(volume.array.shape, np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine)


def ohif_answer(raw_nrrd: bytes, series: Path) -> tuple[np.ndarray, Geometry]:
    """The bytes as OHIF pours them, placed where the DICOM files say each pixel is (the server not consulted)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.glob("*.dcm"))]
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    headers.sort(key=lambda ds: float(normal @ np.asarray(ds.ImagePositionPatient, dtype=float)))
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    step = float(normal @ (np.asarray(headers[1].ImagePositionPatient, float) - headers[0].ImagePositionPatient))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[:3] * col_spacing, iop[3:] * row_spacing, normal * step
    lps[:3, 3] = np.asarray(headers[0].ImagePositionPatient, dtype=float)
    frames = np.frombuffer(raw_nrrd.split(b"\n\n", 1)[1], dtype=np.uint8).reshape(len(headers), rows, cols)
    array = np.transpose(frames, (2, 1, 0))  # (slice, row, column) -> (i = column, j = row, k = slice)
    return array, Geometry(array.shape, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    folder = args.shared / "totalsegmentator"
    ct = read_volume(folder / "example_ct.nii.gz")
    truth = np.isin(read_volume(folder / "example_seg_fast_force_split.nii.gz").array, (2, 3))
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        studies = root / "studies"
        studies.mkdir()
        for axcodes in ("RAS", "PLS", "SRA", "LPS", "RPI"):
            copy = reoriented(ct, axcodes)
            write_volume(copy.array, copy.geometry, studies / f"{axcodes.lower()}.nii.gz")
        write_ct_series(reoriented(ct, "LPS"), studies / "dicom_axial")
        settings = Settings(studies=studies, data_dir=root / "data", rescan_interval_s=0)
        # the server's start-up banner goes to stderr: stdout is this benchmark's JSON only
        with contextlib.redirect_stdout(sys.stderr), TestClient(create_app(settings, load_app("kidney"))) as client:
            reference = None
            requests = [(f"{a.lower()}.nii.gz NIfTI", a.lower(), {}, "") for a in ("RAS", "PLS", "SRA", "LPS", "RPI")]
            requests += [
                ("axial DICOM series (folder)", "dicom_axial", {}, ""),
                ("same series, output=dicom_seg", "dicom_axial", {}, "seg"),
                ("same series, OHIF's request, bytes poured", "dicom_axial", OHIF_PARAMS, "ohif"),
            ]
            for name, image, params, kind in requests:
                output = "dicom_seg" if kind == "seg" else "image"
                response = client.post(
                    f"/infer/kidney_seg?image={image}&output={output}", data={"params": json.dumps(params)}
                )
                response.raise_for_status()
                if kind == "seg":
                    array, geometry = seg_answer(response.content)
                elif kind == "ohif":
                    array, geometry = ohif_answer(response.content, studies / "dicom_axial")
                else:
                    ext = ".nrrd" if params.get("result_extension") == ".nrrd" else ".nii.gz"
                    array, geometry = read_answer(response.content, ext)
                in_ras = to_grid(array, geometry, ct.geometry) > 0
                reference = in_ras if reference is None else reference
                rows[name] = {
                    "stored_as": geometry.axcodes,
                    "kidney_dice": round(dice(in_ras, truth), 4),
                    "agrees_with_ras_answer": bool(np.array_equal(in_ras, reference)),
                }
    print(json.dumps({"benchmark": "geometry_table", "model": "kidney_seg", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
