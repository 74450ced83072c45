"""MONAI Label sessions: PUT /session/ uploads an image for interactive work, GET/DELETE by id."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import Depends, File, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.schemas import SessionCreated
from annotation_server.api.strict_json import MAX_INT
from annotation_server.api.uploads import save_upload, upload_name
from annotation_server.auth.dependencies import current_principal
from annotation_server.auth.roles import Principal, Role
from annotation_server.errors import InvalidRequestError
from annotation_server.services import Services
from annotation_server.sessions import SessionInfo

router = CompatRouter(tags=["session"])


@router.put("/session/", response_model=SessionCreated, summary="Create a session from uploaded file(s)")
async def create_session(
    request: Request,
    uncompress: bool = Query(False, description="unpack an uploaded zip/tar (e.g. a DICOM series)"),
    expiry: int = Query(0, ge=0, le=MAX_INT, description="seconds after last use; 0 = server default"),
    files: list[UploadFile] = File(..., description="one image file, or the slices of a DICOM series"),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> SessionCreated:
    uploads = []
    staging = services.settings.session_dir / ".incoming"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for index, upload in enumerate(files):
            name = upload_name(upload, default=f"file{index}.nii.gz")
            target = staging / f"{uuid.uuid4().hex}-{index}-{name}"
            await save_upload(upload, target, services.settings.max_upload_mb << 20)
            uploads.append((name, target))
        form = await request.form()
        meta = {k: v for k, v in form.items() if isinstance(v, str)}
        session_id, info = await run_in_threadpool(services.sessions.create, uploads, expiry, uncompress, meta)
    finally:
        for _, path in uploads:
            path.unlink(missing_ok=True)
    return SessionCreated(session_id=session_id, session_info=_shown(info, principal))


def _shown(info: SessionInfo, principal: Principal) -> SessionInfo:
    """Server paths (`path`, `image`) only for admins; others see the image's file name."""
    if principal.has(Role.admin):
        return info
    return info.model_copy(update={"path": "", "image": Path(info.image).name})


@router.get("/session/{session_id}", response_model=SessionInfo, summary="Session info, or its image with image=true")
def get_session(
    session_id: str,
    update_ts: bool = Query(False),
    image: bool = Query(False, description="return the session's image file instead of its info"),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> SessionInfo | FileResponse:
    info = services.sessions.get(session_id, update_ts)
    if image:
        path = Path(info.image)
        if not path.is_file():
            raise InvalidRequestError("this session's image is a DICOM folder; it cannot be sent as one file")
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)
    return _shown(info, principal)


@router.delete("/session/{session_id}", response_model=SessionInfo, summary="Remove a session and its files")
def remove_session(
    session_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)
) -> SessionInfo:
    return _shown(services.sessions.remove(session_id), principal)
