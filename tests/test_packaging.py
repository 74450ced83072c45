"""Every package folder, and every folder of package data, is listed in pyproject.toml: a wheel install has the
whole server, its apps, models and viewer, and the build has no "absent from `packages`" warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shipped(path: Path, base: Path) -> bool:
    parts = path.relative_to(base).parts
    return path.is_file() and not any(p == "__pycache__" or p.startswith(".") or p.endswith(".egg-info") for p in parts)


def test_every_package_and_data_folder_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for root_name, folder in config["package-dir"].items():
        base = REPO / folder
        for file in filter(lambda f: _shipped(f, base), base.rglob("*")):
            found.add(".".join((root_name, *file.parent.relative_to(base).parts)))
    assert found == listed, f"add to / remove from pyproject packages: {sorted(found ^ listed)}"


def test_licence_is_an_spdx_expression_with_its_files() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        assert (REPO / name).stat().st_size > 500, name
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_sample_study_and_notice_are_package_data() -> None:
    sample = REPO / "annotation_server" / "sample_data"
    assert (sample / "example_ct_sm.nii.gz").stat().st_size > 100_000
    assert "Apache" in (sample / "NOTICE.md").read_text()
