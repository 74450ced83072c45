"""POST /infer/{model}: run a model on a datastore image, an uploaded file or a session image."""

from __future__ import annotations

import contextlib
import uuid
from enum import StrEnum
from pathlib import Path

from fastapi import Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from annotation_server.api.deps import get_services
from annotation_server.api.multipart import multipart_result
from annotation_server.api.routing import CompatRouter
from annotation_server.api.uploads import parse_json_object, save_upload, upload_name
from annotation_server.audit.context import Audit, request_audit
from annotation_server.auth.dependencies import acting_user, current_principal
from annotation_server.auth.roles import Principal
from annotation_server.dicomweb.seg import seg_for_result
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.imaging.formats import IMAGE_EXTENSIONS, split_extension
from annotation_server.inference.engine import ImageSource, InferOutcome
from annotation_server.inference.params import InferParams
from annotation_server.services import Services

router = CompatRouter(tags=["infer"])


class InferOutput(StrEnum):
    image = "image"
    json = "json"
    all = "all"
    dicom_seg = "dicom_seg"


def parse_infer_params(text: str | None) -> InferParams:
    try:
        return InferParams.model_validate(parse_json_object(text))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidRequestError(f"invalid infer params: {problems}") from exc


async def _resolve_source(
    services: Services, image: str, session_id: str, file: UploadFile | None, cleanup: list[Path]
) -> ImageSource:
    if session_id:
        try:
            info = await run_in_threadpool(services.sessions.get, session_id, True)
        except NotFoundError:
            if not image:
                raise
        else:
            path = Path(info.image)
            ext = split_extension(path.name, IMAGE_EXTENSIONS)[1] if path.is_file() else ".nii.gz"
            return ImageSource(path=path, default_extension=ext)
    if file is not None:
        name = upload_name(file)
        _, ext = split_extension(name, IMAGE_EXTENSIONS)
        target = services.inference.work_dir / f"upload-{uuid.uuid4().hex}-{name}"
        await save_upload(file, target, services.settings.max_upload_mb << 20)
        cleanup.append(target)
        return ImageSource(path=target, default_extension=ext, cacheable=False)
    if image:
        record = await run_in_threadpool(services.datastore.get_image, image)
        path = await run_in_threadpool(services.datastore.image_path, image)
        return ImageSource(path=path, default_extension=record.ext or ".nii.gz", image_id=record.id)
    raise InvalidRequestError("no input image: pass ?image=<datastore id>, ?session_id=<id>, or upload a 'file'")


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


async def _dicom_seg_answer(
    services: Services, model: str, source: ImageSource, outcome: InferOutcome, cleanup: list[Path]
) -> Response:
    """The result as a DICOM SEG referencing the source series (what OHIF's MONAI Label plugin loads)."""
    task = services.inference.task(model)
    names = outcome.params.get("label_names") or dict(task.labels)
    try:
        data = await run_in_threadpool(
            seg_for_result, source.path, outcome.result_path, names, model, outcome.params.get("model_version")
        )
    finally:
        _remove(cleanup)
    return Response(
        data,
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{model}-seg.dcm"'},
    )


@router.post("/infer/{model}", summary="Run a model; default answer is multipart (params JSON, then the label file)")
async def infer(
    request: Request,
    model: str,
    image: str = Query("", description="datastore image id"),
    session_id: str = Query("", description="session id from PUT /session/"),
    output: InferOutput | None = Query(None, description="image | json | all (default: multipart of both)"),
    params: str | None = Form("{}", description="JSON object: clicks, result_extension, result_dtype, ..."),
    file: UploadFile | None = File(None, description="the image itself, instead of ?image="),
    label: UploadFile | None = File(None, description="an input label (scribbles); not used by current models"),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> Response:
    task = services.inference.task(model)  # unknown model: 404 before any upload is stored
    parsed = parse_infer_params(params)
    parsed = parsed.model_copy(update={"client_id": acting_user(principal, parsed.client_id)})  # save_label's author
    cleanup: list[Path] = []
    try:
        source = await _resolve_source(services, image, session_id, file, cleanup)
        if output is InferOutput.dicom_seg and not source.path.is_dir():
            raise InvalidRequestError(
                "output=dicom_seg needs a DICOM source series (an image of a DICOMweb datastore or a DICOM folder); "
                "this image is not DICOM, so use output=image or all"
            )
        if task.is_interactive:
            # A click through MONAI Label's /infer (3D Slicer's MONAILabel module, OHIF) takes its turn with the
            # interactive sessions' clicks: fair between users, a bounded wait, then 503 + Retry-After.
            user = parsed.client_id or (request.client.host if request.client else "anonymous")
            async with services.interactive.admission.slot(user):
                outcome = await services.inference.infer(model, source, parsed)
        else:
            outcome = await services.inference.infer(model, source, parsed)
    except BaseException:
        _remove(cleanup)
        raise
    cleanup.append(outcome.result_path)
    if saved := outcome.params.get("saved_label"):  # save_label: the model's result became a label version
        await audit.arecord("label.save", source.image_id, **saved, author=parsed.client_id, model=model)
    if output is InferOutput.dicom_seg:
        return await _dicom_seg_answer(services, model, source, outcome, cleanup)
    if output is InferOutput.json:
        _remove(cleanup)
        return JSONResponse(outcome.params)
    if output is InferOutput.image:
        return FileResponse(
            outcome.result_path,
            media_type="application/octet-stream",
            filename=outcome.result_path.name,
            background=BackgroundTask(_remove, cleanup),
        )
    data = await run_in_threadpool(outcome.result_path.read_bytes)
    _remove(cleanup)
    return multipart_result(outcome.params, outcome.result_path.name, data)
