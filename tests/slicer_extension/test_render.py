"""A picture: Slicer's red slice view with the segmentation overlay, rendered offscreen (Mesa EGL, no X) by
Slicer's own slice logic and segmentation displayable manager; the overlay must sit on the kidneys.

`ANNOTATION_SERVER_DOCS_IMAGE=1 python -m pytest tests/slicer_extension/test_render.py` also writes the
picture to docs/images/slicer_red_slice.png.
"""

from __future__ import annotations

import slicer_support  # noqa: F401  first: puts the module folder on sys.path, as Slicer does

# isort: split

import ctypes.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from AnnotationServerScene import load_labelmap
from slicer_support import CT, KIDNEYS, REPO, Mrml, headless_scene

pytestmark = pytest.mark.slow


@pytest.fixture
def mrml() -> Iterator[Mrml]:
    yield from headless_scene()


SIZE = 256
_KEEP: list[object] = []


def render_red_slice(mrml: Mrml, volume, segmentation, offset_s: float, png: Path):  # type: ignore[no-untyped-def]
    """The red (axial) slice at `offset_s` mm with and without the segmentation, as RGB rows from the bottom
    (VTK's order), and the slice's XY -> RAS matrix. The picture with the overlay is written to `png`."""
    slicer, vtk = mrml.slicer, __import__("vtk")
    from vtk.util import numpy_support

    slice_node = slicer.vtkMRMLSliceNode()
    slice_node.SetName("Red")
    slice_node.SetLayoutName("Red")
    axial = np.array([[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # Slicer's axial: right on the left
    slice_node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(axial))
    slice_node.UpdateMatrices()
    slice_node.SetDimensions(SIZE, SIZE, 1)
    mrml.scene.AddNode(slice_node)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(mrml.app)
    logic.SetMRMLScene(mrml.scene)
    logic.SetSliceNode(slice_node)
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
    logic.FitSliceToAll()
    logic.SetSliceOffset(offset_s)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(SIZE, SIZE)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # without an initialised interactor the managers segfault
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    mapper = vtk.vtkImageMapper()
    mapper.SetInputConnection(logic.GetImageDataConnection())
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    background = vtk.vtkActor2D()
    background.SetMapper(mapper)
    renderer.AddViewProp(background)
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(mrml.app)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(slice_node)

    def grab(path: Path) -> np.ndarray:
        window.Render()
        image = vtk.vtkWindowToImageFilter()
        image.SetInput(window)
        image.Update()
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(image.GetOutputPort())
        writer.Write()
        scalars = image.GetOutput().GetPointData().GetScalars()
        return numpy_support.vtk_to_numpy(scalars).reshape(SIZE, SIZE, -1)[..., :3].copy()

    shown = grab(png)
    segmentation.GetDisplayNode().SetVisibility(False)
    hidden = grab(png.with_name("without-overlay.png"))
    segmentation.GetDisplayNode().SetVisibility(True)
    node = logic.GetSliceNode()
    xy_to_ras = np.array([[node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    _KEEP.append((window, interactor, renderer, group, logic))  # VTK tears these down at exit, in its own order
    return shown, hidden, xy_to_ras


def test_red_slice_overlay_sits_on_the_kidneys(mrml: Mrml, tmp_path: Path) -> None:
    if ctypes.util.find_library("EGL") is None:
        pytest.skip("no EGL library for offscreen rendering: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri")
    ct_path = CT
    truth_image = nib.load(KIDNEYS)
    truth = np.asarray(truth_image.dataobj)
    volume = mrml.volume(ct_path)
    volume.CreateDefaultDisplayNodes()
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(400, 40)
    segmentation = mrml.segmentation(volume)
    labels = {"kidney": 1, "tumor": 2, "cyst": 3}
    load_labelmap(segmentation, volume, np.isin(truth, (2, 3)).astype(np.uint8), labels)
    k = int(np.argmax((np.isin(truth, (2, 3))).sum(axis=(0, 1))))  # the slice with the most kidney
    offset_s = float((truth_image.affine @ [0, 0, k, 1])[2])

    shown, hidden, xy_to_ras = render_red_slice(mrml, volume, segmentation, offset_s, tmp_path / "with.png")
    overlay = np.abs(shown.astype(int) - hidden.astype(int)).sum(axis=2) > 30

    # Every pixel's world position (the slice node's XY -> RAS), then the label the patient has there.
    ys, xs = np.indices((SIZE, SIZE))
    ras = xy_to_ras @ np.stack([xs.ravel() + 0.0, ys.ravel() + 0.0, np.zeros(xs.size), np.ones(xs.size)])
    ijk = np.rint(np.linalg.inv(truth_image.affine) @ ras)[:3].astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(truth.shape)[:, None]), axis=0)
    under = np.zeros(xs.size, np.uint8)
    under[inside] = truth[tuple(ijk[:, inside])]
    under = under.reshape(SIZE, SIZE)
    kidney_pixels = np.isin(under, (2, 3))
    assert kidney_pixels.sum() > 500 and overlay.sum() > 500
    assert (kidney_pixels[overlay]).mean() > 0.9  # the overlay is on the kidneys ...
    assert overlay[kidney_pixels].mean() > 0.9  # ... and covers them
    # Radiological convention: the patient's right kidney is drawn on the left of the picture.
    right_x = xs[overlay & (under == 2)].mean()
    left_x = xs[overlay & (under == 3)].mean()
    assert right_x < SIZE / 2 < left_x
    if os.environ.get("ANNOTATION_SERVER_DOCS_IMAGE"):
        target = REPO / "docs" / "images" / "slicer_red_slice.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "with.png", target)
