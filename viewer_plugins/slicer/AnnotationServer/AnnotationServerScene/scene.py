"""Volumes and segmentations in Slicer's scene <-> the server's image grid and label values.

The server indexes voxels (i, j, k) of the image as stored; a volume node loaded from that file has the same
IJK and its IJKToRAS is the file's affine in RAS, so grids match without resampling. numpy arrays here are
(i, j, k) like the server's; Slicer's own arrays are (k, j, i) and are transposed at this boundary only.

Segments are named after the server's labels and share one binary-labelmap layer on the volume's full grid
whose voxel values are the server's label values. A delta (the box an interaction changed) is written into
that layer's memory inside its box only (`vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment` with
MODE_REPLACE and an extent replaces the whole shared layer in slicer-core 5.13, so it is not used), and the
voxels of locked segments are never written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import slicer
import vtk
from AnnotationServerLib.delta import Delta
from vtk.util import numpy_support

# Colours for segments named like common labels; any other label gets a colour from its value.
_PALETTE = [
    (0.85, 0.33, 0.1),
    (0.93, 0.69, 0.13),
    (0.47, 0.67, 0.19),
    (0.3, 0.75, 0.93),
    (0.64, 0.08, 0.18),
    (0.49, 0.18, 0.56),
    (0.0, 0.45, 0.74),
]


def _logic() -> type:
    return slicer.vtkSlicerSegmentationsModuleLogic


def volume_geometry(volume_node: slicer.vtkMRMLVolumeNode) -> tuple[tuple[int, int, int], np.ndarray]:
    """The volume's grid as the server sees it: shape (i, j, k) and the 4x4 IJK -> RAS matrix."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    dims = volume_node.GetImageData().GetDimensions()
    return (int(dims[0]), int(dims[1]), int(dims[2])), slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_array(scene: slicer.vtkMRMLScene, array_ijk: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume"):
    """A scalar volume node holding `array_ijk` (indexed i, j, k) placed in the world by `ijk_to_ras`."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    return node


def ensure_segments(segmentation_node, labels: Mapping[str, int]) -> dict[str, str]:
    """One segment per server label (name = label name); returns label -> segment id. Existing ones are kept."""
    segmentation = segmentation_node.GetSegmentation()
    ids: dict[str, str] = {}
    for name, value in labels.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if not segment_id:
            color = _PALETTE[(int(value) - 1) % len(_PALETTE)]
            segment_id = segmentation.AddEmptySegment(name, name, color)
        ids[name] = segment_id
    return ids


def _representation() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _shared_layer(segmentation_node, ids: Mapping[str, str], labels: Mapping[str, int], shape) -> np.ndarray | None:
    """The (k, j, i) numpy view of the one full-grid layer all segments share, with the server's label values as
    voxel values; None when the Segment Editor has since split, cropped or renumbered the layers."""
    segmentation = segmentation_node.GetSegmentation()
    image = None
    for name, value in labels.items():
        segment = segmentation.GetSegment(ids[name])
        current = segment.GetRepresentation(_representation())
        if current is None or segment.GetLabelValue() != int(value):
            return None
        if image is None:
            image = current
        elif current is not image:
            return None
    if image is None or tuple(image.GetExtent()) != (0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1):
        return None
    scalars = image.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        return None
    return numpy_support.vtk_to_numpy(scalars).reshape(shape[2], shape[1], shape[0])


def install_labelmap(segmentation_node, ijk_to_ras: np.ndarray, array_ijk: np.ndarray, labels: Mapping[str, int]):
    """Make every segment share one full-grid layer holding `array_ijk` (server values = segment label values),
    so later deltas are written straight into it."""
    array_ijk = np.asarray(array_ijk, dtype=np.uint8)
    ni, nj, nk = array_ijk.shape
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=float)))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nk, nj, ni)[:] = array_ijk.transpose(2, 1, 0)
    ids = ensure_segments(segmentation_node, labels)
    segmentation = segmentation_node.GetSegmentation()
    was_modifying = segmentation_node.StartModify()
    try:
        for name, value in labels.items():
            segment = segmentation.GetSegment(ids[name])
            segment.SetLabelValue(int(value))
            segment.AddRepresentation(_representation(), image)
    finally:
        segmentation_node.EndModify(was_modifying)
    return image


def apply_delta(
    segmentation_node,
    volume_node,
    delta: Delta | None,
    labels: Mapping[str, int],
    locked: Iterable[str] = (),
) -> list[str]:
    """Write a delta into the segments, in place and only inside its box; locked segments keep every voxel.

    The fast path writes the box into the shared full-grid layer (numpy view of VTK's memory, no copy) and marks
    the segments whose voxels changed as modified. If the layers were reorganised (e.g. by the Segment Editor),
    the segments are first re-laid as one shared layer from their current content. Returns the labels changed."""
    if delta is None:
        return []
    shape, ijk_to_ras = volume_geometry(volume_node)
    ids = ensure_segments(segmentation_node, labels)
    layer = _shared_layer(segmentation_node, ids, labels, shape)
    if layer is None:
        current = labelmap_array(segmentation_node, volume_node, labels)
        install_labelmap(segmentation_node, ijk_to_ras, current, labels)
        layer = _shared_layer(segmentation_node, ids, labels, shape)
        assert layer is not None
    (i0, j0, k0), (ni, nj, nk) = delta.offset, delta.values.shape
    box = layer[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni]  # a view: writes land in the segmentation
    new = delta.values.transpose(2, 1, 0)
    locked_values = [labels[name] for name in set(locked)]
    if locked_values:
        new = np.where(np.isin(box, locked_values) | np.isin(new, locked_values), box, new)
    changed = box != new
    if not changed.any():
        return []
    touched = set(np.unique(box[changed]).tolist()) | set(np.unique(new[changed]).tolist())
    box[...] = new
    segmentation = segmentation_node.GetSegmentation()
    names = [name for name, value in labels.items() if value in touched]
    was_modifying = segmentation_node.StartModify()
    try:
        segmentation.GetSegment(ids[names[0]]).GetRepresentation(_representation()).Modified()
        for name in names:
            segmentation.GetSegment(ids[name]).Modified()
    finally:
        segmentation_node.EndModify(was_modifying)
    return names


def load_labelmap(
    segmentation_node, volume_node, array_ijk: np.ndarray, labels: Mapping[str, int], locked: Iterable[str] = ()
) -> None:
    """Replace the segments by a whole label map (a saved label to resume, an auto-segmentation); locked
    segments keep their voxels."""
    shape, ijk_to_ras = volume_geometry(volume_node)
    array_ijk = np.asarray(array_ijk, dtype=np.uint8)
    if tuple(array_ijk.shape) != tuple(shape):
        raise ValueError(f"label map shape {list(array_ijk.shape)} is not the volume's {list(shape)}")
    locked_values = [labels[name] for name in set(locked)]
    if locked_values:
        current = labelmap_array(segmentation_node, volume_node, labels)
        keep = np.isin(current, locked_values) | np.isin(array_ijk, locked_values)
        array_ijk = np.where(keep, current, array_ijk)
    install_labelmap(segmentation_node, ijk_to_ras, array_ijk, labels)


def _color_table(scene, labels: Mapping[str, int]):
    """A colour table whose entry `value` is named after the label: exports then carry the server's values."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "annotation-server labels")
    table.SetTypeToUser()
    table.SetNumberOfColors(max(labels.values(), default=0) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for name, value in labels.items():
        color = _PALETTE[(int(value) - 1) % len(_PALETTE)]
        table.SetColor(int(value), name, *color, 1.0)
    return table


def labelmap_array(segmentation_node, volume_node, labels: Mapping[str, int]) -> np.ndarray:
    """The segments as one (i, j, k) label map on the volume's grid, with the server's label values."""
    scene = segmentation_node.GetScene()
    ids = ensure_segments(segmentation_node, labels)
    names = vtk.vtkStringArray()
    for name in labels:
        names.InsertNextValue(ids[name])
    table = _color_table(scene, labels)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__annotation_server_export__")
    try:
        if not _logic().ExportSegmentsToLabelmapNode(
            segmentation_node, names, labelmap, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, table
        ):
            raise RuntimeError("Slicer could not export the segments to a label map")
        return np.ascontiguousarray(slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0)).astype(np.uint8)
    finally:
        scene.RemoveNode(labelmap)
        scene.RemoveNode(table)


def write_seg_nrrd(segmentation_node, volume_node, labels: Mapping[str, int], path: Path) -> Path:
    """Write the segments with Slicer's segmentation storage node as one `.seg.nrrd` layer whose voxel values
    are the server's label values (what `PUT /datastore/label` reads), named segments in its header."""
    scene = segmentation_node.GetScene()
    array = labelmap_array(segmentation_node, volume_node, labels)
    table = _color_table(scene, labels)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__annotation_server_save__")
    merged = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "__annotation_server_save__")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    try:
        _, ijk_to_ras = volume_geometry(volume_node)
        labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
        slicer.util.updateVolumeFromArray(labelmap, np.ascontiguousarray(array.transpose(2, 1, 0)))
        labelmap.CreateDefaultDisplayNodes()
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        merged.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if not _logic().ImportLabelmapToSegmentationNode(labelmap, merged):
            raise RuntimeError("Slicer could not build the segmentation to save")
        merged.GetSegmentation().CollapseBinaryLabelmaps(False)
        storage.SetFileName(str(path))
        if not storage.WriteData(merged):
            raise RuntimeError(f"Slicer could not write {path}")
        return Path(path)
    finally:
        for node in (labelmap, merged, table):
            scene.RemoveNode(node)


def markup_voxels(markups_node, ijk_to_ras: np.ndarray) -> list[tuple[int, int, int]]:
    """The control points of a markups node (world RAS) as voxel indices of the volume's grid."""
    ras_to_ijk = np.linalg.inv(np.asarray(ijk_to_ras, dtype=float))
    voxels = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        ras = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, ras)
        ijk = ras_to_ijk @ np.array([*ras, 1.0])
        voxels.append(tuple(int(v) for v in np.floor(ijk[:3] + 0.5)))
    return voxels
