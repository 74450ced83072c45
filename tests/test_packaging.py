"""Every package folder is listed in pyproject.toml, so a wheel install has the whole server and its apps."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for root_name, folder in config["package-dir"].items():
        base = REPO / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            found.add(".".join((root_name, *relative.parts)))
    assert found == listed, f"add to / remove from pyproject packages: {sorted(found ^ listed)}"


def test_sample_study_and_notice_are_package_data() -> None:
    sample = REPO / "annotation_server" / "sample_data"
    assert (sample / "example_ct_sm.nii.gz").stat().st_size > 100_000
    assert "Apache" in (sample / "NOTICE.md").read_text()
