"""Training in MONAI Label's shape (`/train/`) plus a progress stream: fine-tune on the site's labels.

POST /train/{model} starts a job (429 while one runs), GET /train/ reports it (404 when there is none,
which 3D Slicer and OHIF read as "not running"), DELETE /train/ stops it. GET /train/events streams the
job's progress as server-sent events for a live curve in a browser.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, Query
from fastapi.responses import StreamingResponse

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.task_status import task_status
from annotation_server.audit.context import Audit, request_audit
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.learning.finetune import labeled_images
from annotation_server.learning.jobs import FINISHED, TrainJob, read_events
from annotation_server.services import Services

router = CompatRouter(tags=["train"])


def _params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidRequestError("the body must be a JSON object of training parameters (or empty)")
    return params


@router.post("/train/{model}", response_model=TrainJob, summary="Fine-tune a model on all 'final' labels")
def start_training(
    model: str,
    params: Any = Body(None, description="e.g. {'max_epochs': 10, 'val_split': 0.2}; client_id is ignored"),
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> TrainJob:
    job = services.training.start(model, _params(params), labeled_images(services.datastore))
    audit.record("train.start", model, job=job.id, params=_params(params))
    return job


@router.post("/train/", summary="Deprecated MONAI Label form: train every trainable model (one at a time)")
def start_all(
    params: Any = Body(None), services: Services = Depends(get_services), audit: Audit = Depends(request_audit)
) -> dict[str, Any]:
    body = _params(params)
    if not services.training.trainable:
        raise NotFoundError("this app has no trainable models")
    model = services.training.trainable[0]
    job = services.training.start(model, body.get(model) or {}, labeled_images(services.datastore))
    audit.record("train.start", model, job=job.id, params=body.get(model) or {})
    return {model: {"result": job.model_dump(), "detail": None}}


@router.get("/train/", summary="The latest training job (404 when none), or all with ?all=true")
def training_status(
    all: bool = Query(False, description="every job of this server run"),
    check_if_running: bool = Query(False, description="404 unless a job is running"),
    services: Services = Depends(get_services),
) -> Any:
    training = services.training
    return task_status(training.running, training.latest, training.all, all, check_if_running, "Train")


@router.delete("/train/", summary="Stop the running training job (null when none runs)")
def stop_training(services: Services = Depends(get_services)) -> TrainJob | None:
    return services.training.stop()


async def _event_stream(services: Services, job_id: str, poll_s: float) -> AsyncIterator[str]:
    folder = Path(services.training.jobs_dir) / job_id
    sent = 0
    while True:
        # The status first: a job seen finished has written all its events, so the read below has its result.
        # Both read files: in a thread, not on the event loop.
        job = await asyncio.to_thread(services.training.get, job_id)
        finished = job.status in FINISHED  # the job object is live: its status is read once, here
        events = await asyncio.to_thread(read_events, folder)
        for event in events[sent:]:
            yield f"event: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"
        sent = len(events)
        if finished:
            yield f"event: end\ndata: {job.model_dump_json()}\n\n"
            return
        await asyncio.sleep(poll_s)


@router.get("/train/events", summary="Server-sent events: a job's progress, result and end")
def training_events(
    job: str | None = Query(None, description="job id (default: the latest job)"),
    services: Services = Depends(get_services),
) -> StreamingResponse:
    chosen = services.training.get(job) if job else services.training.latest()
    if chosen is None:
        raise NotFoundError("No Train Tasks Found")
    return StreamingResponse(
        _event_stream(services, chosen.id, 0.5),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
