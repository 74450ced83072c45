"""Shared pieces of the Slicer extension's tests: the module folder on sys.path, and Slicer's own classes
(PyPI's `slicer-core`) set up headless, or a skip that says how to install them.

Not a conftest.py: a second `conftest` module would shadow tests/conftest.py for `from conftest import ...`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "viewer_plugins" / "slicer"
MODULE_DIR = EXTENSION / "AnnotationServer"
CT = REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz"  # the embedded real CT (RAS)
KIDNEYS = Path(__file__).parent / "data" / "example_kidneys.nii.gz"  # its TotalSegmentator kidneys: 2 right, 3 left
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # what Slicer does for a folder in "Additional module paths"

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen through Mesa EGL, no X

_RULES_REGISTERED = False


def slicer_core() -> Any:
    """Slicer's `slicer` package from slicer-core, or a skip (PyPI's unrelated `slicer` package is not it)."""
    try:
        import slicer
    except ImportError:
        pytest.skip("slicer-core is not installed: pip install -e '.[slicer]'")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed `slicer` is not 3D Slicer's (pip uninstall slicer; pip install -e '.[slicer]')")
    return slicer


class Mrml:
    """A headless MRML scene with the application logic and default colours, like Slicer's own at start-up."""

    def __init__(self) -> None:
        slicer = slicer_core()
        global _RULES_REGISTERED
        if not _RULES_REGISTERED:  # the application registers these at start-up; headless we do it once
            factory = slicer.vtkSegmentationConverterFactory.GetInstance()
            factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
            factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
            _RULES_REGISTERED = True
        self.slicer = slicer
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.app.GetColorLogic().SetMRMLScene(self.scene)
        self.app.GetColorLogic().AddDefaultColorNodes()

    def volume(self, path: Path, name: str = "ct") -> Any:
        """A volume node read by Slicer's own storage node (as File > Add Data does)."""
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        storage = self.slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node), f"Slicer could not read {path}"
        return node

    def segmentation(self, volume: Any) -> Any:
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotation")
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        node.CreateDefaultDisplayNodes()
        return node


def headless_scene() -> Iterator[Mrml]:
    """For a test module's `mrml` fixture: a fresh scene, cleared afterwards."""
    scene = Mrml()
    yield scene
    scene.scene.Clear(1)
