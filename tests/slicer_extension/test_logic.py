"""The module's Logic and its in-Slicer test (`AnnotationServerTest`), run on slicer-core against a live server.

Headless there is no Qt and no application, so four stand-ins are installed: an empty `qt` module (only the
Widget uses it), plain base classes for `slicer.ScriptedLoadableModule`, the scene as `slicer.mrmlScene`, and
file I/O (`slicer.util.loadVolume`, `loadLabelVolume`, `saveNode`) done by Slicer's own storage nodes, which is
what the application's readers and writers use underneath. Everything else is the module's code as Slicer
would run it.
"""

from __future__ import annotations

import slicer_support  # noqa: F401  first: puts the module folder on sys.path, as Slicer does

# isort: split

import gzip
import importlib
import sys
import types
import unittest
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from slicer_support import CT, KIDNEYS, Mrml, headless_scene

pytestmark = pytest.mark.slow


@pytest.fixture
def mrml() -> Iterator[Mrml]:
    yield from headless_scene()


def _headless_module(mrml: Mrml, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    slicer = mrml.slicer
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    bases = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: object = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: object = None) -> None:
            pass

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: object = None) -> None:
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, ms: int = 0) -> None:
            print(message)

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleTest,
    ):
        setattr(bases, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", bases)
    monkeypatch.setattr(slicer, "mrmlScene", mrml.scene, raising=False)

    def read(kind: str):  # type: ignore[no-untyped-def]
        def load(path: str, properties: dict | None = None):  # type: ignore[no-untyped-def]
            node = mrml.scene.AddNewNodeByClass(kind, Path(path).name)
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(str(path))
            assert storage.ReadData(node), path
            return node

        return load

    def save(node, path: str, properties: dict | None = None) -> bool:  # type: ignore[no-untyped-def]
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        return bool(storage.WriteData(node))

    monkeypatch.setattr(slicer.util, "loadVolume", read("vtkMRMLScalarVolumeNode"))
    monkeypatch.setattr(slicer.util, "loadLabelVolume", read("vtkMRMLLabelMapVolumeNode"))
    monkeypatch.setattr(slicer.util, "saveNode", save)
    monkeypatch.delitem(sys.modules, "AnnotationServer", raising=False)
    module = importlib.import_module("AnnotationServer")
    monkeypatch.delitem(sys.modules, "AnnotationServer")
    return module


def test_logic_workflow_and_the_in_slicer_test_against_a_live_server(
    live_server, mrml: Mrml, monkeypatch: pytest.MonkeyPatch, studies: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    module = _headless_module(mrml, monkeypatch)
    server = live_server("--app", "kidney", "--studies", str(studies))

    # AnnotationServerTest.runTest(), as Reload and Test runs it, with the live part switched on.
    monkeypatch.setenv("ANNOTATION_SERVER_URL", server.url)
    case = module.AnnotationServerTest()
    case.setUp = lambda: None  # slicer.mrmlScene.Clear() would drop the colour tables the headless scene needs
    case.runTest()

    logic = module.AnnotationServerLogic()
    info = logic.connect(server.url)
    assert "kidney_seg" in logic.segmentation_models() and "region_growing" in logic.interactive_models()
    assert info["labels"] == ["kidney", "tumor", "cyst"]
    image = logic.next_sample("random")
    assert image in logic.studies()
    logic.load_image("sample_ct", logic.download_image("sample_ct"))
    state = logic.open_session("region_growing", "kidney", from_saved=False)
    logic.session_opened(state)

    truth_image = nib.load(KIDNEYS)
    truth = np.asarray(truth_image.dataobj)
    centre_ras = (truth_image.affine @ np.r_[np.argwhere(truth == 3).mean(0), 1.0])[:3]  # the left kidney
    written = logic.apply_answer(logic.send_prompt(logic.point(centre_ras, True, "kidney")), "point")
    assert written == ["kidney"]
    logic.book.lock("kidney")
    lasso_ras = [(truth_image.affine @ [i, j, 12, 1])[:3] for i, j in ((20, 20), (90, 20), (90, 80), (20, 80))]
    logic.apply_answer(logic.send_prompt(logic.lasso(lasso_ras, True, "cyst")), "lasso")
    logic.apply_answer(logic.send_history("undo"), "undo")
    logic.apply_answer(logic.send_history("redo"), "redo")
    served = np.asarray(
        nib.Nifti1Image.from_bytes(gzip.decompress(logic.client.session_mask(logic.book.session_id))).dataobj
    )
    assert np.array_equal(logic.current_labelmap(), served) and (served == 1).any() and (served == 3).any()
    saved = logic.save("final")
    assert saved["version"] == 1

    # A volume the server lacks is uploaded before it is segmented; the result lands in the segments.
    lonely = mrml.volume(CT, "fresh scan")
    logic.book = None
    logic.set_volume(lonely)
    result = logic.auto_segment("kidney_seg")
    assert logic.volume_node.GetAttribute(module.IMAGE_ID_ATTRIBUTE) in logic.studies()
    logic.show_label(result, logic.labels("kidney_seg"))
    assert np.array_equal(logic.current_labelmap(), logic.read_label(result))

    # Resuming the saved label: the session and the segments start from it.
    logic.set_volume(logic.volume_node)
    logic.volume_node.SetAttribute(module.IMAGE_ID_ATTRIBUTE, "sample_ct")
    logic.book = None
    sample = mrml.volume(studies / "sample_ct.nii.gz", "sample again")
    sample.SetAttribute(module.IMAGE_ID_ATTRIBUTE, "sample_ct")
    logic.set_volume(sample)
    resumed = logic.open_session("region_growing", None, from_saved=True)
    logic.session_opened(resumed)
    assert np.array_equal(logic.current_labelmap(), served)

    # The Slicer-edited segmentation saved as .seg.nrrd under its own tag.
    stored = logic.save_segmentation("slicer-edit")
    assert stored["tag"] == "slicer-edit" and stored["image"] == "sample_ct"
