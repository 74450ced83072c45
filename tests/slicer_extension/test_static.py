"""Static checks of the extension: the UI has every widget the module uses, CMake lists every file, the Lib
imports only what Slicer bundles, the module has Slicer's four classes, and the CLI writes it all out."""

from __future__ import annotations

import slicer_support  # noqa: F401  first: puts the module folder on sys.path, as Slicer does

# isort: split

import ast
import re
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from slicer_support import EXTENSION, MODULE_DIR
from typer.testing import CliRunner

from annotation_server.cli import cli

MODULE = MODULE_DIR / "AnnotationServer.py"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_every_ui_widget_the_module_uses_exists_in_the_ui_file() -> None:
    used = set(re.findall(r"\bself\.ui\.(\w+)", MODULE.read_text())) | set(
        re.findall(r"\bui\.(\w+)", MODULE.read_text())
    )
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "AnnotationServer.ui")
    names = {w.get("name") for w in tree.iter("widget")}
    assert len(used) > 40
    assert used <= names, f"missing in the .ui: {sorted(used - names)}"


def test_module_cmakelists_lists_every_file_and_nothing_else() -> None:
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = {
        entry.replace("${MODULE_NAME}", "AnnotationServer")
        for entry in re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", text, flags=re.MULTILINE)
    }
    present = _files(MODULE_DIR) - {"CMakeLists.txt"}
    assert listed == present, f"not listed: {sorted(present - listed)}; listed but absent: {sorted(listed - present)}"
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text


def test_extension_cmakelists_has_the_metadata_and_the_module() -> None:
    text = (EXTENSION / "CMakeLists.txt").read_text()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(rf"set\({key} ", text), key
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(AnnotationServer)" in text


def _imports(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_lib_imports_only_the_standard_library_numpy_and_requests() -> None:
    allowed = set(sys.stdlib_module_names) | {"numpy", "requests", "AnnotationServerLib"}
    for path in (MODULE_DIR / "AnnotationServerLib").glob("*.py"):
        assert _imports(path) <= allowed, f"{path.name} imports {sorted(_imports(path) - allowed)}"
    scene_allowed = allowed | {"slicer", "vtk", "AnnotationServerScene"}  # MRML, and no Qt
    for path in (MODULE_DIR / "AnnotationServerScene").glob("*.py"):
        assert _imports(path) <= scene_allowed, f"{path.name} imports {sorted(_imports(path) - scene_allowed)}"


def test_module_has_slicers_four_classes_and_only_the_scene_module_touches_mrml() -> None:
    tree = ast.parse(MODULE.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"AnnotationServer", "AnnotationServerWidget", "AnnotationServerLogic", "AnnotationServerTest"} <= set(
        classes
    )
    methods = {f.name for f in classes["AnnotationServerTest"].body if isinstance(f, ast.FunctionDef)}
    assert "runTest" in methods
    for path in (MODULE_DIR / "AnnotationServerLib").glob("*.py"):
        assert "vtkMRML" not in path.read_text(), path.name


def test_cli_writes_the_extension_folder_and_zip(tmp_path: Path) -> None:
    expected = _files(EXTENSION) - {"__init__.py"}  # the package marker is not part of the extension
    result = CliRunner().invoke(cli, ["slicer-extension", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = tmp_path / "out" / "AnnotationServerExtension"
    assert _files(written) == expected
    assert (written / "AnnotationServer" / "AnnotationServer.py").read_bytes() == MODULE.read_bytes()
    assert "Additional module paths" in result.output
    zipped = CliRunner().invoke(cli, ["slicer-extension", "--out", str(tmp_path / "z"), "--zip"])
    assert zipped.exit_code == 0, zipped.output
    with zipfile.ZipFile(tmp_path / "z" / "AnnotationServerExtension.zip") as archive:
        names = {n.removeprefix("AnnotationServerExtension/") for n in archive.namelist()}
    assert names == expected
