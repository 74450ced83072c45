"""The only code of the AnnotationServer module that touches MRML (Slicer's scene, volumes, segmentations).

It needs Slicer's classes (`slicer`, from the application or from PyPI's `slicer-core` headless) but no Qt.
"""

from AnnotationServerScene.scene import (
    apply_delta,
    ensure_segments,
    install_labelmap,
    labelmap_array,
    load_labelmap,
    markup_voxels,
    volume_from_array,
    volume_geometry,
    write_seg_nrrd,
)

__all__ = [
    "apply_delta",
    "ensure_segments",
    "install_labelmap",
    "labelmap_array",
    "load_labelmap",
    "markup_voxels",
    "volume_from_array",
    "volume_geometry",
    "write_seg_nrrd",
]
