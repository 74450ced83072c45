"""Our interactive session API (beside MONAI Label's routes): prompts in, compressed mask deltas out.

POST   /interactive/sessions                 open on a datastore image (JSON) ...
POST   /interactive/sessions/upload          ... or on an uploaded volume (multipart)
GET    /interactive/sessions                 open sessions
GET    /interactive/sessions/{id}            state (label, object clicks, undo/redo availability)
POST   /interactive/sessions/{id}/prompt     point | box | scribble | lasso -> delta
POST   /interactive/sessions/{id}/undo|redo|reset                         -> delta
GET    /interactive/sessions/{id}/mask       the full label map (.nii.gz on the image grid)
POST   /interactive/sessions/{id}/save       a new label version in the datastore
DELETE /interactive/sessions/{id}
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from annotation_server.api.deps import get_services
from annotation_server.api.errors import validation_message
from annotation_server.api.routing import CompatRouter
from annotation_server.api.strict_json import MAX_INT
from annotation_server.api.uploads import parse_json_object, save_upload, upload_name
from annotation_server.audit.context import Audit, request_audit
from annotation_server.auth.dependencies import acting_user, current_principal
from annotation_server.auth.roles import Principal, Role
from annotation_server.errors import ForbiddenError, InvalidRequestError
from annotation_server.imaging import write_volume
from annotation_server.imaging.formats import IMAGE_EXTENSIONS, split_extension
from annotation_server.interactive.prompts import Prompt
from annotation_server.services import Services

router = CompatRouter(prefix="", tags=["interactive"])


def _owner_name(principal: Principal) -> str | None:
    """Who a new session belongs to: the logged-in user; nobody in particular while auth is off."""
    return principal.username if principal.authenticated else None


def _check_owner(services: Services, principal: Principal, session_id: str, closing: bool = False) -> None:
    """A session is its creator's: others get 403; an admin may close (not drive) another user's session.
    With auth off every caller is the same anonymous admin and nothing is checked (one dict lookup)."""
    if not principal.authenticated:
        return
    owner = services.interactive.manager.owner(session_id)
    if owner is None or owner == principal.username or (closing and principal.has(Role.admin)):
        return
    what = "close" if closing else "use"
    who = "its owner or an admin" if closing else "only its owner"
    raise ForbiddenError(
        f"interactive session '{session_id}' belongs to '{owner}'; user '{principal.username}' may not {what} it "
        f"({who} may). Open your own session with POST /interactive/sessions"
    )


async def owned(
    session_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)
) -> None:
    """Route dependency: the caller may use this session (see _check_owner)."""
    _check_owner(services, principal, session_id)


class OpenSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="datastore image id")
    model: str | None = Field(None, description="click model (default: the app's first deepgrow model)")
    label: str | None = Field(None, description="label to start with (default: the app's first)")
    client_id: str | None = None
    from_label: str | None = Field(
        None, description="start from this saved label tag (e.g. 'final', or 'original' for a model's) to correct it"
    )
    from_version: int | None = Field(
        None, ge=1, le=MAX_INT, description="with from_label: which version (default: the latest)"
    )


class PromptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    new_object: bool = Field(False, description="start a new object (e.g. a second lesion of the same label)")


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str = "final"
    client_id: str | None = None
    image: str | None = Field(None, description="for uploaded volumes: the id to add the image under")
    info: dict[str, Any] = Field(default_factory=dict, description="e.g. seconds the annotator spent")


class SessionState(BaseModel):
    model_config = ConfigDict(extra="allow")

    session_id: str
    image: str | None
    shape: list[int]
    labels: dict[str, int]
    label: str
    model: str | None
    version: int


class DeltaAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")

    session_id: str
    version: int
    label: str
    delta: dict[str, Any] | None = Field(description="changed box: offset, shape, codec (zlib), base64 data")
    can_undo: bool
    can_redo: bool
    seconds: float = Field(description="time in the server, from the request's arrival to the answer")
    timing: dict[str, float | None] | None = Field(
        None, description="prompts: queued_s (waiting for the inference thread), forward_s (the model's forward pass)"
    )


class Saved(BaseModel):
    image: str
    tag: str
    version: int


@router.post("/interactive/sessions", response_model=SessionState, summary="Open a session on a datastore image")
async def open_session(
    body: OpenSession,
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> dict[str, Any]:
    session = await run_in_threadpool(
        services.interactive.open,
        owner=_owner_name(principal),
        image_id=body.image,
        model=body.model,
        label=body.label,
        client_id=body.client_id,
        from_label=body.from_label,
        from_version=body.from_version,
    )
    return session.describe()


@router.post("/interactive/sessions/upload", response_model=SessionState, summary="Open a session on an upload")
async def open_upload_session(
    file: UploadFile = File(...),
    params: str | None = Form("{}"),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> dict[str, Any]:
    try:
        options = OpenSession.model_validate({**parse_json_object(params), "image": "upload"})
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid params: {validation_message(exc.errors())}") from exc
    name = upload_name(file)
    split_extension(name, IMAGE_EXTENSIONS)
    target = services.settings.data_dir / "interactive" / "uploads" / f"{uuid.uuid4().hex}-{name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    await save_upload(file, target, services.settings.max_upload_mb << 20)
    try:
        session = await run_in_threadpool(
            services.interactive.open,
            upload=target,
            owner=_owner_name(principal),
            model=options.model,
            label=options.label,
            client_id=options.client_id,
            from_label=options.from_label,  # refused with a reason: an upload has no saved labels
        )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return session.describe()


@router.get("/interactive/sessions", summary="Open sessions (in memory or spilled to disk)")
def list_sessions(
    services: Services = Depends(get_services), principal: Principal = Depends(current_principal)
) -> list[dict[str, Any]]:
    """Admins (and everyone while auth is off) see all sessions; others their own."""
    mine = None if principal.has(Role.admin) else principal.username
    return services.interactive.manager.sessions(owner=mine)


@router.get(
    "/interactive/sessions/{session_id}",
    response_model=SessionState,
    summary="Session state",
    dependencies=[Depends(owned)],
)
def session_state(session_id: str, services: Services = Depends(get_services)) -> dict[str, Any]:
    return services.interactive.manager.get(session_id).describe()


@router.post(
    "/interactive/sessions/{session_id}/prompt",
    response_model=DeltaAnswer,
    summary="Point, box, scribble or lasso; answers with the changed box only",
    dependencies=[Depends(owned)],
)
async def prompt(session_id: str, body: PromptRequest, services: Services = Depends(get_services)) -> JSONResponse:
    # Returned as a ready JSONResponse: the answer is built by the service in DeltaAnswer's shape (the model
    # documents it), and re-validating it would cost every click a little.
    return JSONResponse(await services.interactive.prompt(session_id, body.prompt, body.new_object))


@router.post(
    "/interactive/sessions/{session_id}/undo",
    response_model=DeltaAnswer,
    summary="Undo the last change",
    dependencies=[Depends(owned)],
)
async def undo(session_id: str, services: Services = Depends(get_services)) -> JSONResponse:
    return JSONResponse(await services.interactive.undo(session_id))


@router.post(
    "/interactive/sessions/{session_id}/redo",
    response_model=DeltaAnswer,
    summary="Redo an undone change",
    dependencies=[Depends(owned)],
)
async def redo(session_id: str, services: Services = Depends(get_services)) -> JSONResponse:
    return JSONResponse(await services.interactive.redo(session_id))


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    locked_labels: list[str] = Field(default_factory=list, description="labels whose voxels the reset keeps")


@router.post(
    "/interactive/sessions/{session_id}/reset",
    response_model=DeltaAnswer,
    summary="Clear the mask",
    dependencies=[Depends(owned)],
)
async def reset(
    session_id: str,
    body: ResetRequest = Body(default_factory=ResetRequest),
    services: Services = Depends(get_services),
) -> JSONResponse:
    return JSONResponse(await services.interactive.reset(session_id, body.locked_labels))


@router.get(
    "/interactive/sessions/{session_id}/mask",
    summary="The whole label map (.nii.gz on the image grid)",
    dependencies=[Depends(owned)],
)
async def full_mask(session_id: str, services: Services = Depends(get_services)) -> Response:
    session = services.interactive.manager.get(session_id)
    volume = services.inference.cache.get(Path(session.image_path))
    target = services.inference.work_dir / f"session-{session.id}-{uuid.uuid4().hex[:8]}.nii.gz"
    with session.lock:
        mask = session.mask.copy()
    await run_in_threadpool(write_volume, mask, volume.geometry, target, volume)
    return FileResponse(
        target,
        media_type="application/octet-stream",
        filename=f"{session.image_id or 'mask'}.nii.gz",
        headers={"X-Session-Version": str(session.version)},
        background=BackgroundTask(target.unlink, missing_ok=True),
    )


@router.post(
    "/interactive/sessions/{session_id}/save",
    response_model=Saved,
    summary="Save as a new label version",
    dependencies=[Depends(owned)],
)
async def save(
    session_id: str,
    body: SaveRequest = Body(default_factory=SaveRequest),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> Saved:
    author = acting_user(principal, body.client_id)  # with auth on, the logged-in user
    label = await run_in_threadpool(services.interactive.save, session_id, body.tag, author, body.image, body.info)
    await audit.arecord(
        "label.save", label.image_id, tag=label.tag, version=label.version, author=author, session=session_id
    )
    return Saved(image=label.image_id, tag=label.tag, version=label.version)


@router.delete("/interactive/sessions/{session_id}", summary="Close a session (unsaved changes are discarded)")
def close(
    session_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)
) -> dict[str, Any]:
    _check_owner(services, principal, session_id, closing=True)
    services.interactive.manager.remove(session_id)
    return {}
