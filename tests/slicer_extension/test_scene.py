"""The scene module against 3D Slicer's own classes (slicer-core, headless): geometry, deltas, locks, .seg.nrrd.

Labels are compared where they land in the patient (world RAS), not grid against grid.
"""

from __future__ import annotations

import slicer_support  # noqa: F401  first: puts the module folder on sys.path, as Slicer does

# isort: split

import gzip
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationServerLib import AnnotationServerClient, SessionBook, decode_delta
from AnnotationServerLib.delta import Delta
from AnnotationServerLib.prompts import box_prompt, lasso_prompt, point_prompt, ras_to_ijk
from AnnotationServerScene import apply_delta, labelmap_array, load_labelmap, volume_geometry, write_seg_nrrd
from slicer_support import CT, KIDNEYS, Mrml, headless_scene

LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}


@pytest.fixture
def mrml() -> Iterator[Mrml]:
    yield from headless_scene()


def write_lps_copy(source: Path, target: Path) -> Path:
    """The same image stored L-P-S (first two axes flipped): same patient, different grid."""
    image = nib.load(source)
    current = nib.orientations.io_orientation(image.affine)
    wanted = nib.orientations.axcodes2ornt(("L", "P", "S"))
    lps = image.as_reoriented(nib.orientations.ornt_transform(current, wanted))
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    nib.save(lps, target)
    return target


def world_lookup(values: np.ndarray, affine: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """`values` (on the grid of `affine`) at world points, nearest voxel."""
    ijk = np.rint((np.linalg.inv(affine) @ np.c_[points_ras, np.ones(len(points_ras))].T)[:3].T).astype(int)
    return values[tuple(ijk.T)]


def read_any(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Any label file the server hands out, as an (i, j, k) array and its IJK -> RAS affine (ITK is LPS)."""
    image = sitk.ReadImage(str(path))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def grid_points(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ijk = np.indices(shape).reshape(3, -1).T
    return ijk, (affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_volume_node_has_the_niftis_geometry(mrml: Mrml, tmp_path: Path, orientation: str) -> None:
    path = CT if orientation == "RAS" else write_lps_copy(CT, tmp_path / "lps.nii.gz")
    nifti = nib.load(path)
    node = mrml.volume(path)
    shape, ijk_to_ras = volume_geometry(node)
    assert shape == nifti.shape
    np.testing.assert_allclose(ijk_to_ras, nifti.affine, atol=1e-4)
    array_ijk = mrml.slicer.util.arrayFromVolume(node).transpose(2, 1, 0)
    assert np.array_equal(array_ijk, np.asarray(nifti.dataobj))
    # Same patient: the LPS copy's voxel at any world point holds what the original holds there.
    original = nib.load(CT)
    ijk, world = grid_points(shape, ijk_to_ras)
    there = world_lookup(np.asarray(original.dataobj), original.affine, world)
    assert np.array_equal(array_ijk[tuple(ijk.T)], there)
    # A markups point placed at a voxel's world position comes back as that voxel.
    markup = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    voxel = (40, 30, 12)
    markup.AddControlPointWorld(*(ijk_to_ras @ [*voxel, 1.0])[:3])
    position = [0.0, 0.0, 0.0]
    markup.GetNthControlPointPositionWorld(0, position)
    assert ras_to_ijk(ijk_to_ras, position, shape) == voxel


def test_delta_writes_only_its_box_and_never_a_locked_segment(mrml: Mrml) -> None:
    volume = mrml.volume(CT)
    segmentation = mrml.segmentation(volume)
    shape, _ = volume_geometry(volume)
    start = np.zeros(shape, np.uint8)
    start[30:50, 30:50, 10:20] = 1
    start[40:45, 40:45, 12:16] = 2
    load_labelmap(segmentation, volume, start, LABELS)
    assert np.array_equal(labelmap_array(segmentation, volume, LABELS), start)

    values = np.full((30, 30, 8), 3, np.uint8)  # a cyst over all of it ...
    written = apply_delta(segmentation, volume, Delta((35, 35, 11), values), LABELS, locked={"tumor"})
    expected = start.copy()
    box = expected[35:65, 35:65, 11:19]
    box[box != 2] = 3  # ... except the locked tumor
    assert np.array_equal(labelmap_array(segmentation, volume, LABELS), expected)
    assert set(written) == {"kidney", "cyst"}

    # After the layers change behind the module's back (the Segment Editor moving a segment to its own layer),
    # a delta still lands exactly.
    slicer = mrml.slicer
    kidney = segmentation.GetSegmentation().GetSegment("kidney")
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    own_layer = slicer.vtkOrientedImageData()
    own_layer.DeepCopy(kidney.GetRepresentation(name))
    kidney.AddRepresentation(name, own_layer)
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 2
    assert np.array_equal(labelmap_array(segmentation, volume, LABELS), expected)
    zeros = Delta((0, 0, 0), np.zeros((5, 5, 5), np.uint8))
    apply_delta(segmentation, volume, zeros, LABELS)
    expected[0:5, 0:5, 0:5] = 0
    assert np.array_equal(labelmap_array(segmentation, volume, LABELS), expected)


@pytest.mark.slow
def test_session_deltas_in_a_segmentation_equal_the_servers_mask_and_seg_nrrd_lands_in_place(
    live_server, mrml: Mrml, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    studies = tmp_path / "studies"
    studies.mkdir()
    write_lps_copy(CT, studies / "ct_lps.nii.gz")
    server = live_server("--app", "kidney", "--studies", str(studies))
    client = AnnotationServerClient(server.url, client_id="slicer-test")
    volume = mrml.volume(studies / "ct_lps.nii.gz")  # as Slicer loads the study the server has
    segmentation = mrml.segmentation(volume)
    shape, ijk_to_ras = volume_geometry(volume)

    truth_image = nib.load(KIDNEYS)
    truth = np.asarray(truth_image.dataobj)
    kidney_world = truth_image.affine @ np.r_[np.argwhere(truth == 2).mean(0), 1.0]
    centre = ras_to_ijk(ijk_to_ras, kidney_world[:3], shape)  # the click where the right kidney is
    book = SessionBook.from_state(client.open_session("ct_lps", model="region_growing", label="kidney"))
    assert tuple(book.shape) == shape
    load_labelmap(segmentation, volume, np.zeros(shape, np.uint8), book.labels)
    i, j, k = centre

    def check(answer: dict, kind: str, locked: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        book.answered(answer, kind)
        apply_delta(segmentation, volume, decode_delta(answer["delta"]), book.labels, locked)
        served = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(client.session_mask(book.session_id))).dataobj)
        assert np.array_equal(labelmap_array(segmentation, volume, book.labels), served), kind

    check(client.prompt(book.session_id, point_prompt(centre)), "point")
    check(client.prompt(book.session_id, box_prompt((i - 5, j - 5, k - 2), (i + 5, j + 5, k + 2)), True), "box")
    tumor = lasso_prompt(2, k, [(i - 3, j - 3), (i + 3, j - 3), (i + 3, j + 3), (i - 3, j + 3)], label="tumor")
    check(client.prompt(book.session_id, tumor), "lasso")
    check(client.undo(book.session_id), "undo")
    check(client.redo(book.session_id), "redo")
    before = labelmap_array(segmentation, volume, book.labels)
    cover = lasso_prompt(2, k, [(i - 9, j - 9), (i + 9, j - 9), (i + 9, j + 9)], label="cyst", locked={"tumor"})
    check(client.prompt(book.session_id, cover), "lasso", {"tumor"})
    assert np.array_equal(labelmap_array(segmentation, volume, book.labels) == 2, before == 2)
    check(client.reset(book.session_id), "reset")
    check(client.undo(book.session_id), "undo")

    # The TotalSegmentator kidneys, drawn in Slicer on the LPS grid and saved with Slicer's storage node as a
    # .seg.nrrd, land on the server where the kidneys are in the patient.
    _, world = grid_points(shape, ijk_to_ras)
    kidneys_here = np.isin(world_lookup(truth, truth_image.affine, world), (2, 3)).reshape(shape).astype(np.uint8)
    load_labelmap(segmentation, volume, kidneys_here, book.labels)
    path = write_seg_nrrd(segmentation, volume, book.labels, tmp_path / "kidneys.seg.nrrd")
    saved = client.put_label("ct_lps", path, tag="slicer", info={"source": "segment editor"})
    assert saved["tag"] == "slicer"
    (tmp_path / "stored").mkdir()
    stored, stored_affine = read_any(client.download_label("ct_lps", "slicer", tmp_path / "stored"))
    stored_ijk, stored_world = grid_points(stored.shape, stored_affine)
    expected = np.isin(world_lookup(truth, truth_image.affine, stored_world), (2, 3)).astype(np.uint8)
    assert np.array_equal(stored[tuple(stored_ijk.T)], expected)
    assert expected.sum() == (truth == 2).sum() + (truth == 3).sum()
