"""The image layer: every format reads to (i, j, k) + RAS affine and writes back onto the exact same grid."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_nifti

from annotation_server.errors import CorruptFileError, GeometryMismatchError, UnsupportedFormatError
from annotation_server.imaging import Geometry, read_geometry, read_volume, split_extension, write_volume
from annotation_server.imaging.conform import conform_label

LPS_AFFINE = np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 95.5], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
OBLIQUE = nib.eulerangles.euler2mat(0.3, 0.1, -0.2) @ np.diag([0.7, 0.9, 3.0])


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = OBLIQUE
    affine[:3, 3] = [12.5, -30.0, 7.0]
    return affine


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"])
@pytest.mark.parametrize(
    "affine", [np.diag([1.0, 2.0, 3.0, 1.0]), LPS_AFFINE, _oblique_affine()], ids=["ras-aniso", "lps", "oblique"]
)
def test_round_trip_keeps_grid_and_voxels(tmp_path: Path, ext: str, affine: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 4, size=(9, 7, 5)).astype(np.uint8)
    geometry = Geometry(array.shape, affine)
    path = write_volume(array, geometry, tmp_path / f"label{ext}")
    volume = read_volume(path)
    assert volume.geometry.matches(geometry), (volume.geometry.describe(), geometry.describe())
    assert np.array_equal(volume.array, array)
    assert read_geometry(path).matches(geometry)


def test_nifti_result_copies_reference_header_exactly(tmp_path: Path, sample_ct: Path) -> None:
    image = read_volume(sample_ct)
    out = write_volume((image.array > 0).astype(np.uint8), image.geometry, tmp_path / "r.nii.gz", reference=image)
    written, source = nib.load(str(out)), nib.load(str(sample_ct))
    assert np.array_equal(written.get_sform(), source.get_sform())
    assert np.array_equal(written.get_qform(), source.get_qform())
    assert written.header.get_data_dtype() == np.uint8


def test_lps_mr_sample_orientation(shared_data: Path) -> None:
    mr = read_volume(shared_data / "totalsegmentator" / "example_mr_sm.nii.gz")
    assert mr.geometry.axcodes == "LPS"
    assert mr.geometry.shape == (117, 91, 20)


def test_itk_and_nibabel_agree_on_world_coordinates(tmp_path: Path) -> None:
    """A NIfTI converted to NRRD by SimpleITK itself must read back on the same RAS grid as the NIfTI."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    source = write_nifti(tmp_path / "a.nii.gz", array, LPS_AFFINE)
    sitk.WriteImage(sitk.ReadImage(str(source)), str(tmp_path / "a.nrrd"))
    from_nifti, from_nrrd = read_volume(source), read_volume(tmp_path / "a.nrrd")
    assert from_nrrd.geometry.matches(from_nifti.geometry)
    assert np.array_equal(from_nrrd.array, from_nifti.array)


@pytest.mark.slow
def test_messy_dicom_series_loads(shared_data: Path) -> None:
    """JPEG 2000 lossless, blanked UIDs, slice step 2 mm while SliceThickness says 3 mm."""
    volume = read_volume(shared_data / "totalsegmentator" / "example_ct_dicom")
    assert volume.geometry.shape == (512, 512, 20)
    assert volume.geometry.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.array.min() >= -1024 and volume.array.max() > 500  # rescaled to HU
    # Same world grid as TotalSegmentator's NIfTI conversion of this series (which is LAS, i.e. j flipped).
    reference = nib.load(str(shared_data / "totalsegmentator" / "example_seg_dicom.nii.gz"))
    corner = volume.geometry.affine @ np.array([0, 511, 0, 1])
    assert np.allclose(corner[:3], reference.affine[:3, 3], atol=1e-3)


def test_dicom_with_empty_charset_loads(shared_data: Path) -> None:
    volume = read_volume(shared_data / "dcmqi_ct-3slice")
    assert volume.geometry.shape == (512, 512, 3)
    assert volume.meta["SeriesInstanceUID"].startswith("1.2.392")


@pytest.mark.slow
def test_dicom_folder_with_stray_files_sorted_by_position(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    source = sorted((shared_data / "totalsegmentator" / "example_ct_dicom").iterdir())
    for index, path in enumerate(reversed(source[:5])):  # file names in reverse spatial order
        shutil.copy(path, folder / f"slice{index:02d}")
    (folder / "notes.txt").write_text("not dicom")
    volume = read_volume(folder)
    reference = read_volume(shared_data / "totalsegmentator" / "example_ct_dicom")
    assert volume.geometry.shape == (512, 512, 5)
    # The subset's first slice is some slice k0 of the full series; voxels and grid must line up from there.
    k0 = np.linalg.solve(reference.geometry.affine, volume.geometry.affine[:, 3])[2]
    assert k0 == pytest.approx(round(k0), abs=1e-3)
    k0 = round(k0)
    assert np.array_equal(volume.array, reference.array[..., k0 : k0 + 5])


def test_truncated_gzip_is_a_corrupt_file(tmp_path: Path, sample_ct: Path) -> None:
    data = sample_ct.read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or damaged"):
        read_volume(broken)


def test_garbage_and_empty_files_are_corrupt(tmp_path: Path) -> None:
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 10))
    (tmp_path / "empty.nrrd").write_bytes(b"")
    (tmp_path / "junk.nrrd").write_bytes(b"NRRD0004\ngarbage\n")
    for name in ("junk.nii.gz", "empty.nrrd", "junk.nrrd"):
        with pytest.raises(CorruptFileError):
            read_volume(tmp_path / name)


def test_unsupported_extension_and_4d(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="supported"):
        split_extension("scan.png")
    write_nifti(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(UnsupportedFormatError, match="3-D"):
        read_volume(tmp_path / "four.nii.gz")


def test_split_extension_uses_last_path_component() -> None:
    assert split_extension(r"C:\Users\me\AppData\Local\Temp\tmp1.seg.nrrd") == ("tmp1", ".seg.nrrd")
    assert split_extension("/tmp/x/case.01.nii.gz") == ("case.01", ".nii.gz")


def test_single_slice_volume_from_2d_tool(tmp_path: Path) -> None:
    """MITK's 2-D tool sends X x Y x 1 volumes."""
    write_nifti(tmp_path / "slice.nii.gz", np.ones((30, 20, 1), np.int16))
    assert read_volume(tmp_path / "slice.nii.gz").geometry.shape == (30, 20, 1)


def test_seg_nrrd_carries_segment_names(tmp_path: Path) -> None:
    array = np.zeros((5, 5, 5), np.uint8)
    array[1:3, 1:3, 1:3] = 2
    write_volume(array, Geometry(array.shape, np.eye(4)), tmp_path / "s.seg.nrrd", label_names={"tumor": 2})
    meta = read_volume(tmp_path / "s.seg.nrrd").meta
    assert meta["Segment0_Name"] == "tumor" and meta["Segment0_LabelValue"] == "2"


def test_conform_pads_cropped_subgrid_and_refuses_mismatch() -> None:
    image = Geometry((20, 20, 10), np.diag([2.0, 2.0, 5.0, 1.0]))
    crop_affine = image.affine.copy()
    crop_affine[:3, 3] = image.affine[:3, :3] @ np.array([4, 6, 2])
    crop = np.ones((5, 3, 2), np.uint8)
    with pytest.raises(GeometryMismatchError):  # plain labelmaps must match exactly
        conform_label(crop, Geometry(crop.shape, crop_affine), image)
    full = conform_label(crop, Geometry(crop.shape, crop_affine), image, allow_subgrid=True)
    assert full.shape == image.shape and full.sum() == crop.sum() and full[4, 6, 2] == 1 and full[3, 6, 2] == 0
    flipped = image.affine.copy()
    flipped[0, 0] = -2.0
    with pytest.raises(GeometryMismatchError, match="voxel grid"):
        conform_label(np.zeros(image.shape, np.uint8), Geometry(image.shape, flipped), image)
    shifted = image.affine.copy()
    shifted[:3, 3] += [1.0, 0, 0]  # half a voxel: not a sub-grid
    with pytest.raises(GeometryMismatchError):
        conform_label(np.zeros((5, 5, 5), np.uint8), Geometry((5, 5, 5), shifted), image, allow_subgrid=True)
