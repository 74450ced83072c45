"""The README and docs/ stay true: generated pages are current, links resolve, commands are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Pages that may be linked before they exist (none now: every linked page must exist).
PLACEHOLDERS: set[str] = set()


def test_settings_page_is_generated_from_the_settings() -> None:
    from annotation_server.settings_doc import render

    assert (REPO / "docs" / "settings.md").read_text() == render(), (
        "docs/settings.md is stale: python -m annotation_server.settings_doc > docs/settings.md"
    )


def test_readme_and_docs_links_resolve() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (page.parent / target).resolve()
            if not resolved.exists() and str(resolved.relative_to(REPO)) not in PLACEHOLDERS:
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert missing == []


def test_readme_names_no_path_outside_the_clone_and_the_real_test_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme  # the reference notes beside the repository are not part of a clone
    assert re.search(r"^python -m pytest -q(\s+#.*)?$", readme, re.MULTILINE)  # the fast suite
    assert re.search(r"^python -m pytest -q --full(\s+#.*)?$", readme, re.MULTILINE)  # everything
    assert "--full" in (REPO / ".ci" / "run").read_text()
    assert (REPO / "docs" / "images" / "viewer.png").stat().st_size < 400_000
