"""Shipped model bundles (data only), installed as the `annotation_models` package.

Each folder is a MONAI bundle with its model card (README.md) and the script that reproduces it.
"""

from importlib.resources import as_file, files
from pathlib import Path


def bundle_path(name: str) -> Path:
    """Folder of the shipped bundle `name` (a real path in a clone, an editable or a regular install)."""
    with as_file(files(__name__) / name) as path:
        return Path(path)
