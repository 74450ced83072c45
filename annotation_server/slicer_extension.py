"""`annotate-server slicer-extension --out DIR [--zip]`: write the 3D Slicer extension from the installed package.

Users who installed the server from a wheel have no `viewer_plugins/slicer/` folder; the extension's files
travel as package data of `annotation_slicer_extension`, and this command writes them as a ready folder (or
zip) to add under Slicer's "Additional module paths".
"""

from __future__ import annotations

import zipfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated

import typer

from annotation_server.cli_support import console

PACKAGE = "annotation_slicer_extension"
FOLDER = "AnnotationServerExtension"
SKIPPED = {"__init__.py"}  # the top-level marker that makes the folder a package; not part of the extension


def extension_files() -> dict[str, Traversable]:
    """Relative path -> file, for every file of the extension in the installed package."""
    root = resources.files(PACKAGE)
    found: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.name == "__pycache__" or child.name.endswith(".pyc"):
                continue
            path = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, path + "/")
            elif path not in SKIPPED:
                found[path] = child

    walk(root, "")
    if "AnnotationServer/AnnotationServer.py" not in found:
        raise FileNotFoundError(f"the package {PACKAGE} lacks AnnotationServer/AnnotationServer.py: reinstall")
    return found


def write_extension(out: Path, as_zip: bool = False) -> Path:
    """Write the extension under `out` (as `out/AnnotationServerExtension/` or `.zip`); returns what was written."""
    files = extension_files()
    out.mkdir(parents=True, exist_ok=True)
    if as_zip:
        target = out / f"{FOLDER}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, file in sorted(files.items()):
                archive.writestr(f"{FOLDER}/{name}", file.read_bytes())
        return target
    target = out / FOLDER
    for name, file in files.items():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(file.read_bytes())
    return target


def slicer_extension(
    out: Annotated[Path, typer.Option("--out", help="folder to write the extension into")],
    as_zip: Annotated[
        bool, typer.Option("--zip", help="write AnnotationServerExtension.zip instead of a folder")
    ] = False,
) -> None:
    """Write the 3D Slicer extension (AnnotationServer module) for Slicer's "Additional module paths"."""
    target = write_extension(out, as_zip)
    module = (target.parent / FOLDER / "AnnotationServer") if as_zip else target / "AnnotationServer"
    console.print(f"wrote {target}")
    if as_zip:
        console.print(f"unzip it into {target.parent}, then add {module} in Slicer:")
    else:
        console.print(f"add {module} in Slicer:")
    console.print(
        "Edit > Application Settings > Modules > Additional module paths > Add, restart Slicer, "
        "then open Modules > Segmentation > Annotation Server"
    )
