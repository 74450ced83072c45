"""The one image-loading layer: volumes with their geometry, read and written in every supported format."""

from annotation_server.imaging.formats import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, split_extension
from annotation_server.imaging.io import read_geometry, read_volume, write_volume
from annotation_server.imaging.volume import Geometry, Volume

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_EXTENSIONS",
    "Geometry",
    "Volume",
    "read_geometry",
    "read_volume",
    "split_extension",
    "write_volume",
]
