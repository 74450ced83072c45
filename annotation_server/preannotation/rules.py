"""Which new PACS series an app pre-annotates automatically, declared in `AppSpec(preannotation=...)`.

Kept apart from the watcher so that an app module can import it without pulling in the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PreannotationRules:
    """`model`: the automatic model to run (default: the app's first segmentation model). A series qualifies
    when its Modality is in `modalities`, its BodyPartExamined in `body_parts` and its SeriesDescription
    matches the regular expression `series_description` (case-insensitive); an empty rule accepts anything,
    and a series without the tag passes a body-part rule (many scanners leave it blank)."""

    model: str | None = None
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    series_description: str | None = None

    def rejects(self, info: Mapping[str, Any]) -> str | None:
        """Why a series (its QIDO fields as plain values) is not pre-annotated, or None when it qualifies."""
        modality = str(info.get("Modality") or "")
        if self.modalities and modality.upper() not in {m.upper() for m in self.modalities}:
            return f"modality {modality or '(none)'} is not one of {', '.join(self.modalities)}"
        body_part = str(info.get("BodyPartExamined") or "")
        if self.body_parts and body_part and body_part.upper() not in {b.upper() for b in self.body_parts}:
            return f"body part {body_part} is not one of {', '.join(self.body_parts)}"
        description = str(info.get("SeriesDescription") or "")
        if self.series_description and not re.search(self.series_description, description, re.IGNORECASE):
            return f"series description {description!r} does not match {self.series_description!r}"
        return None
