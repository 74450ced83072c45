"""The simulated-click protocol (`clicks.simulate_clicks`) driven through the server's two click paths over HTTP.

- **Session API**, as the web viewer and the Slicer extension use it: open `/interactive/sessions`, send one
  point prompt per click, apply each answer's delta to the client's own copy of the mask (as a viewer does).
- **MONAI Label `/infer`**, as 3D Slicer's MONAILabel module uses it: every request resends all foreground and
  background clicks so far, and the answer is the whole label file.

`http` is anything with httpx's `get`/`post`/`delete`: FastAPI's `TestClient` or an `httpx.Client` on a live
server. Scores are what the client ends up holding, compared with the truth on the stored grid, so the path's
geometry (reading, model space, writing) is part of what is measured.
"""

from __future__ import annotations

import gzip
import itertools
import json
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from annotation_server.evaluation.clicks import Point, simulate_clicks
from annotation_server.imaging import read_volume
from annotation_server.interactive.delta import apply_delta


def _check(response: Any) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response


def session_segmenter(http: Any, image: str, model: str, label: str) -> tuple[Callable[..., np.ndarray], Callable]:
    """A `segment(foreground, background)` that sends only the newest click as a session prompt, and a closer."""
    opened = _check(http.post("/interactive/sessions", json={"image": image, "model": model, "label": label})).json()
    session_id = opened["session_id"]
    mask = np.zeros(opened["shape"], dtype=np.uint8)
    sent = {"foreground": 0, "background": 0}

    def segment(foreground: list[Point], background: list[Point]) -> np.ndarray:
        positive = len(foreground) > sent["foreground"]
        point = foreground[-1] if positive else background[-1]
        sent["foreground" if positive else "background"] += 1
        prompt = {"type": "point", "point": [int(v) for v in point], "positive": positive}
        answer = _check(http.post(f"/interactive/sessions/{session_id}/prompt", json={"prompt": prompt})).json()
        apply_delta(mask, answer["delta"])
        return mask.copy()

    def close() -> None:
        http.delete(f"/interactive/sessions/{session_id}")

    return segment, close


def infer_segmenter(http: Any, image: str, model: str, label: str) -> Callable[..., np.ndarray]:
    """A `segment(foreground, background)` that resends every click to MONAI Label's `/infer`, as Slicer does."""
    client_id = f"benchmark-{uuid.uuid4().hex[:8]}"  # one annotator: the server's click memory is per user

    def segment(foreground: list[Point], background: list[Point]) -> np.ndarray:
        params = {
            "foreground": [[int(v) for v in p] for p in foreground],
            "background": [[int(v) for v in p] for p in background],
            "label": label,
            "client_id": client_id,
            "result_extension": ".nii.gz",
        }
        response = _check(http.post(f"/infer/{model}?image={image}&output=image", data={"params": json.dumps(params)}))
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "result.nii.gz"
            data = response.content
            path.write_bytes(data if data[:2] == b"\x1f\x8b" else gzip.compress(data))
            return (read_volume(path).array > 0).astype(np.uint8)

    return segment


def number_of_clicks(scores: Sequence[float], target: float) -> int | None:
    """NoC@target: clicks until Dice first reaches `target` (1-based), None if it never does within the run."""
    return next((index + 1 for index, score in enumerate(scores) if score >= target), None)


def worst_drop(scores: Sequence[float]) -> float:
    """The largest fall of Dice from one click to the next (0 if it never falls)."""
    return max([0.0, *(a - b for a, b in itertools.pairwise(scores))])


def summarize(scores: Sequence[float]) -> dict[str, object]:
    return {
        "dice_after_click": [round(s, 4) for s in scores],
        "noc85": number_of_clicks(scores, 0.85),
        "noc90": number_of_clicks(scores, 0.90),
        "worst_drop": round(worst_drop(scores), 4),
    }


def run_both_paths(
    http: Any, image: str, truth: np.ndarray, clicks: int, model: str = "kidney_click", label: str = "kidney"
) -> dict[str, dict[str, object]]:
    """Dice after each simulated click on `image` through the session API and through `/infer`."""
    segment, close = session_segmenter(http, image, model, label)
    try:
        session = simulate_clicks(segment, truth, clicks)
    finally:
        close()
    infer = simulate_clicks(infer_segmenter(http, image, model, label), truth, clicks)
    return {"session": summarize(session), "infer": summarize(infer)}
