"""Scoring in MONAI Label's shape (`/scoring/`): uncertainty of the serving model on the datastore's images.

POST /scoring/{method} starts a background job (429 while one is submitted or running, as MONAI Label),
GET /scoring/ reports the latest job (404 when there is none, or with `check_if_running` when none runs),
DELETE /scoring/ stops it (JSON null when nothing runs). Scores feed the `epistemic` and `tta` strategies.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.task_status import task_status
from annotation_server.errors import InvalidRequestError
from annotation_server.learning.scoring import ScoringJob
from annotation_server.services import Services

router = CompatRouter(tags=["scoring"])


class ScoringRequest(BaseModel):
    """POST /scoring/{method} body; clients add `client_id` and Slicer echoes config keys, both ignored."""

    model_config = ConfigDict(extra="ignore")

    images: list[str] | None = Field(None, description="image ids to score (default: every unlabeled image)")
    model: str | None = Field(None, description="model to score with (default: the server's scoring model)")
    force: bool = Field(False, description="score again even where this model version has a score")


def _request(params: Any) -> ScoringRequest:
    if params is None:
        return ScoringRequest()
    if not isinstance(params, dict):
        raise InvalidRequestError('the body must be a JSON object such as {"images": ["id", ...]} (or empty)')
    try:
        return ScoringRequest.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequestError(f"bad scoring parameters: {problems}") from exc


@router.post("/scoring/{method}", response_model=ScoringJob, summary="Score images in the background")
def start_scoring(
    method: str,
    params: Any = Body(None, description="optional {images: [ids], model, force}"),
    run_sync: bool = Query(False, description="wait for the job to finish before answering"),
    services: Services = Depends(get_services),
) -> ScoringJob:
    request = _request(params)
    job = services.scoring.start(method, request.images, model=request.model, force=request.force)
    return services.scoring.wait(job.id) if run_sync else job


@router.get("/scoring/", summary="The latest scoring job (404 when none), or all with ?all=true")
def scoring_status(
    all: bool = Query(False, description="every job of this server run"),
    check_if_running: bool = Query(False, description="404 unless a job is submitted or running"),
    services: Services = Depends(get_services),
) -> Any:
    scoring = services.scoring
    return task_status(scoring.running, scoring.latest, scoring.jobs, all, check_if_running, "Scoring")


@router.delete("/scoring/", summary="Stop the running scoring job (null when none runs)")
def stop_scoring(services: Services = Depends(get_services)) -> ScoringJob | None:
    return services.scoring.stop()
