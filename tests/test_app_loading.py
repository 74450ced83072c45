"""Apps are declarative modules found by name or path; adding one never edits the server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from annotation_server.app_spec import AppSpec, available_apps, load_app
from annotation_server.errors import NotFoundError

APP_SOURCE = textwrap.dedent(
    """
    from annotation_server.app_spec import AppSpec
    from annotation_server.learning.strategies import FirstStrategy
    from .models import Everything

    APP = AppSpec(name="liver", description="a site's own app", labels={"liver": 1},
                  models=[Everything()], strategies={"oldest": FirstStrategy()})
    """
)
MODELS_SOURCE = textwrap.dedent(
    """
    import numpy as np
    from annotation_server.inference.task import InferResult, InferTask

    class Everything(InferTask):
        def __init__(self):
            super().__init__(name="everything", type="segmentation", labels={"liver": 1}, description="all ones")

        def infer(self, volume, params):
            return InferResult(mask=np.ones(volume.array.shape, np.uint8), label_names={"liver": 1})
    """
)


def test_kidney_app_by_name() -> None:
    app = load_app("kidney")
    assert app.name == "kidney" and dict(app.labels) == {"kidney": 1, "tumor": 2, "cyst": 3}
    assert "kidney" in available_apps()
    assert any(model.type == "deepgrow" for model in app.models)


def test_app_by_path_with_relative_imports(tmp_path: Path) -> None:
    folder = tmp_path / "liver_app"
    folder.mkdir()
    (folder / "__init__.py").write_text(APP_SOURCE)
    (folder / "models.py").write_text(MODELS_SOURCE)
    app = load_app(str(folder))
    assert app.name == "liver" and [m.name for m in app.models] == ["everything"] and "oldest" in app.strategies


def test_unknown_app_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="kidney"):
        load_app("no_such_app")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="__init__"):
        load_app(str(tmp_path / "empty"))


def test_app_spec_refuses_duplicates() -> None:
    model = load_app("kidney").models[0]
    with pytest.raises(ValueError, match="duplicate model"):
        AppSpec(name="x", description="", labels={"a": 1}, models=[model, model])
    with pytest.raises(ValueError, match="same value"):
        AppSpec(name="x", description="", labels={"a": 1, "b": 1}, models=[])
