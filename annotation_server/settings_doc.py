"""docs/settings.md from the Settings field descriptions: `python -m annotation_server.settings_doc > docs/settings.md`.

The descriptions in `settings.py` are the one place a setting is explained (they are `--help` text too);
this renders them as a table so the page never drifts (tests/test_docs.py compares it with the file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from annotation_server.settings import Settings

HEADER = """# Settings

Every setting can be given as an `ANNOTATE_*` environment variable or in a `.env` file in the folder the
server starts in; the most used ones are also command-line options (`annotate-server --help`). Lists are
JSON (`ANNOTATE_CORS_ORIGINS='["https://viewer.example"]'`).

Generated from `annotation_server/settings.py` by `python -m annotation_server.settings_doc > docs/settings.md`.

| environment variable | default | what |
|---|---|---|
"""


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "one per deployment" if isinstance(value, Path) else f"`{json.dumps(value)}`"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "-"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        text = (field.description or "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `ANNOTATE_{name.upper()}` | {_default(field)} | {text} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
