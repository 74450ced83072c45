"""Per-click cost of applying a server answer in Slicer: delta decode + write into a vtkMRMLSegmentationNode.

Starts a real `annotate-server --app kidney` on 127.0.0.1 with the full-body CT (../shared's example_ct.nii.gz,
else the embedded sample), clicks the kidneys (found from TotalSegmentator's labels of the small CT, in world
coordinates) with a click model, and times, for each answer, what the Slicer module does on the GUI thread:
`decode_delta` and the scene module's `apply_delta` into the segmentation (slicer-core, headless). Baseline: what
a whole-label answer costs instead (MONAI Label's module gets a label file per click): the file written,
read by Slicer's storage node and imported as segments. Prints JSON.

    python benchmarks/slicer_delta_apply.py [--model region_growing] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "viewer_plugins" / "slicer" / "AnnotationServer"))
sys.path.insert(0, str(REPO / "benchmarks"))

from AnnotationServerLib import AnnotationServerClient, decode_delta  # noqa: E402
from AnnotationServerLib.prompts import point_prompt, ras_to_ijk  # noqa: E402
from common import Server  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "totalsegmentator"


def slicer_scene():  # type: ignore[no-untyped-def]
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    return slicer, scene, app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="region_growing")
    parser.add_argument("--repeats", type=int, default=3, help="times the click sequence is run")
    args = parser.parse_args()
    from AnnotationServerScene import apply_delta, labelmap_array, load_labelmap, volume_geometry

    ct = SHARED / "example_ct.nii.gz"
    if not ct.exists():
        ct = REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz"
    slicer, scene, _app = slicer_scene()
    work = Path(tempfile.mkdtemp(prefix="slicer-bench-"))
    studies = work / "studies"
    studies.mkdir()
    (studies / "ct.nii.gz").write_bytes(ct.read_bytes())
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(ct))
    assert storage.ReadData(volume)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    shape, ijk_to_ras = volume_geometry(volume)

    truth = nib.load(SHARED / "example_seg.nii.gz") if (SHARED / "example_seg.nii.gz").exists() else None
    if truth is not None:
        labels_small = np.asarray(truth.dataobj)
        centres = [truth.affine @ np.r_[np.argwhere(labels_small == v).mean(0), 1.0] for v in (2, 3)]
        clicks = [ras_to_ijk(ijk_to_ras, c[:3], shape) for c in centres]
    else:
        clicks = [tuple(n // 2 for n in shape)]

    server = Server(["--app", "kidney", "--studies", str(studies)])
    results: dict[str, list[float]] = {"decode_ms": [], "apply_ms": [], "box_voxels": []}
    full_ms: list[float] = []
    try:
        client = AnnotationServerClient(server.url, client_id="bench")
        for _ in range(args.repeats):
            state = client.open_session("ct", model=args.model, label="kidney")
            labels = state["labels"]
            load_labelmap(segmentation, volume, np.zeros(shape, np.uint8), labels)
            sid = state["session_id"]
            sequence = []
            for n, (i, j, k) in enumerate(clicks):
                sequence.append(("prompt", point_prompt((i, j, k)), n > 0))
                sequence.append(("prompt", point_prompt((i + 2, j + 2, k)), False))
                sequence.append(("prompt", point_prompt((i, j, k + 3), positive=False), False))
            answers = [client.prompt(sid, p, new_object=new) for _, p, new in sequence]
            answers += [client.undo(sid), client.redo(sid)]
            for answer in answers:
                started = time.perf_counter()
                delta = decode_delta(answer["delta"])
                decoded = time.perf_counter()
                apply_delta(segmentation, volume, delta, labels)
                done = time.perf_counter()
                if delta is not None:
                    results["decode_ms"].append((decoded - started) * 1e3)
                    results["apply_ms"].append((done - decoded) * 1e3)
                    results["box_voxels"].append(float(delta.values.size))
            served = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(client.session_mask(sid))).dataobj)
            assert np.array_equal(labelmap_array(segmentation, volume, labels), served), "segments differ from server"
            label_bytes = client.session_mask(sid)
            for n in range(3):  # the full-label path: file in, Slicer reads it, imports it as segments
                started = time.perf_counter()
                path = work / f"answer-{n}.nii.gz"
                path.write_bytes(label_bytes)
                labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "answer")
                reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
                reader.SetFileName(str(path))
                assert reader.ReadData(labelmap)
                target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "full")
                target.SetReferenceImageGeometryParameterFromVolumeNode(volume)
                assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, target)
                full_ms.append((time.perf_counter() - started) * 1e3)
                scene.RemoveNode(labelmap)
                scene.RemoveNode(target)
            client.close_session(sid)
    finally:
        server.stop()

    per_click = [d + a for d, a in zip(results["decode_ms"], results["apply_ms"], strict=True)]
    print(
        json.dumps(
            {
                "image": ct.name,
                "shape": list(shape),
                "model": args.model,
                "answers": len(per_click),
                "per_click_ms_p50": round(statistics.median(per_click), 3),
                "per_click_ms_p95": round(float(np.percentile(per_click, 95)), 3),
                "per_click_ms_max": round(max(per_click), 3),
                "decode_ms_p50": round(statistics.median(results["decode_ms"]), 3),
                "apply_ms_p50": round(statistics.median(results["apply_ms"]), 3),
                "box_voxels_p50": int(statistics.median(results["box_voxels"])),
                "volume_voxels": int(np.prod(shape)),
                "full_label_file_import_ms_p50": round(statistics.median(full_ms), 3),
                "segments_equal_server_mask": True,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
