"""The embedded sample study set, copied out of the package on first run.

Serving from a per-user folder keeps the installed package read-only and lets the server write its
index and labels next to the studies as it does for any site's own folder.
"""

from __future__ import annotations

import logging
from importlib.resources import as_file, files
from pathlib import Path

from annotation_server.datastore.atomic import atomic_copy

logger = logging.getLogger(__name__)

SAMPLE_FILES = ("example_ct_sm.nii.gz",)


def ensure_sample_studies(target: Path) -> Path:
    """Copy the sample studies into `target` unless already there; return `target`."""
    target.mkdir(parents=True, exist_ok=True)
    package = files("annotation_server") / "sample_data"
    for name in SAMPLE_FILES:
        destination = target / name
        if destination.exists():
            continue
        with as_file(package / name) as source:
            atomic_copy(Path(source), destination)
        logger.info("sample study %s copied to %s", name, target)
    return target
