"""Find the studies in a folder: image files at the top level and folders that hold a DICOM series.

Only the top level is scanned (as MONAI Label does), so `labels/` and the hidden state folder are never
mistaken for studies. A DICOM folder is recognised by its first files, which keeps a rescan of thousands
of studies to a directory listing plus a few reads per new folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from annotation_server.datastore.ids import is_valid_image_id
from annotation_server.errors import UnsupportedFormatError
from annotation_server.imaging.dicom import is_dicom_series_dir
from annotation_server.imaging.formats import IMAGE_EXTENSIONS, split_extension

logger = logging.getLogger(__name__)

LABELS_DIRNAME = "labels"


@dataclass(frozen=True)
class DiscoveredStudy:
    id: str
    name: str
    ext: str
    relpath: str
    kind: str
    size: int
    mtime: float


def discover_studies(root: Path, known_dicom_dirs: set[str] | None = None) -> dict[str, DiscoveredStudy]:
    """Map image id -> study for everything servable directly under `root`.

    `known_dicom_dirs` are folder names already known to be DICOM series; they are not re-read.
    """
    known = known_dicom_dirs or set()
    found: dict[str, DiscoveredStudy] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or entry.name == LABELS_DIRNAME:
            continue
        study = _study_from_entry(root, entry, known)
        if study is None:
            continue
        if study.id in found:
            logger.warning(
                "two studies share the id %r (%s, %s); serving the first", study.id, found[study.id].name, study.name
            )
            continue
        found[study.id] = study
    return found


def _study_from_entry(root: Path, entry: os.DirEntry[str], known_dicom_dirs: set[str]) -> DiscoveredStudy | None:
    stat = entry.stat()
    if entry.is_dir():
        if entry.name not in known_dicom_dirs and not is_dicom_series_dir(Path(entry.path)):
            return None
        if not is_valid_image_id(entry.name):
            logger.warning("skipping DICOM folder %r: its name is not a valid image id", entry.name)
            return None
        return DiscoveredStudy(entry.name, entry.name, "", entry.name, "dicom", 0, stat.st_mtime)
    if not entry.is_file():
        return None
    try:
        stem, ext = split_extension(entry.name, IMAGE_EXTENSIONS)
    except UnsupportedFormatError:
        return None
    if not is_valid_image_id(stem):
        logger.warning("skipping %r: its name is not a valid image id", entry.name)
        return None
    return DiscoveredStudy(stem, entry.name, ext, entry.name, "file", stat.st_size, stat.st_mtime)
