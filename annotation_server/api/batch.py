"""Batch inference in MONAI Label's shape (`/batch/infer`): a PACS tool or script labels many images at once.

POST /batch/infer/{model}?images=all|labeled|unlabeled starts a background job (a JSON body may give
`images` as a list of ids and `label_tag`; MONAI Label's other keys such as `device` are accepted and
ignored); 429 while one runs. GET /batch/infer answers the latest job with per-image progress and errors
(404 when none; `?all=true`, `?check_if_running=true`); DELETE /batch/infer stops it (null when none runs).
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.task_status import task_status
from annotation_server.errors import InvalidRequestError
from annotation_server.inference.batch import IMAGE_SETS, ORIGINAL_TAG, BatchJob
from annotation_server.services import Services

router = CompatRouter(tags=["batch"])


class BatchRequest(BaseModel):
    """The optional JSON body; MONAI Label's `device`, `multi_gpu`, `max_workers`, ... are ignored."""

    model_config = ConfigDict(extra="ignore")

    images: str | list[str] | None = Field(None, description="all | labeled | unlabeled, or a list of image ids")
    label_tag: str = Field(ORIGINAL_TAG, description="tag the results are saved under")
    max_batch_size: int = Field(0, ge=0, description="only the first N images (0: all), as MONAI Label")


def _request(params: Any) -> BatchRequest:
    if params is None:
        return BatchRequest()
    if not isinstance(params, dict):
        raise InvalidRequestError('the body must be a JSON object such as {"images": ["id", ...]} (or empty)')
    try:
        return BatchRequest.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequestError(f"bad batch inference parameters: {problems}") from exc


@router.post("/batch/infer/{model}", response_model=BatchJob, summary="Run a model over many images in the background")
def start_batch(
    model: str,
    images: str | None = Query(None, description="all | labeled | unlabeled (default all), or ids joined by commas"),
    run_sync: bool = Query(False, description="wait for the job to finish before answering"),
    params: Any = Body(None, description="optional {images: [ids] | 'unlabeled', label_tag, max_batch_size}"),
    services: Services = Depends(get_services),
) -> BatchJob:
    request = _request(params)
    chosen: str | list[str] = request.images if request.images is not None else images or "all"
    if isinstance(chosen, str) and chosen not in IMAGE_SETS:  # one id, or ids joined by commas
        chosen = [part.strip() for part in chosen.split(",") if part.strip()]
    if request.max_batch_size:
        chosen = services.batch.resolve_images(chosen)[: request.max_batch_size]
    job = services.batch.start(model, chosen, label_tag=request.label_tag, request=request.model_dump())
    return services.batch.wait(job.id) if run_sync else job


@router.get("/batch/infer", summary="The latest batch inference job (404 when none), or all with ?all=true")
def batch_status(
    all: bool = Query(False, description="every job of this server run"),
    check_if_running: bool = Query(False, description="404 unless a job is submitted or running"),
    services: Services = Depends(get_services),
) -> Any:
    batch = services.batch
    return task_status(batch.running, batch.latest, batch.jobs, all, check_if_running, "Batch Infer")


@router.delete("/batch/infer", summary="Stop the running batch inference job (null when none runs)")
def stop_batch(services: Services = Depends(get_services)) -> BatchJob | None:
    return services.batch.stop()
