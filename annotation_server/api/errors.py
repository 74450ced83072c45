"""Domain errors to HTTP: every client mistake is a 4xx with `{"detail": "<what to do>"}`.

Anything unexpected is logged with its traceback and answered with a 500 that names the log, so the
server keeps running and an admin can find the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from annotation_server.errors import (
    AlreadyRunningError,
    BusyError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    StoredFileChangedError,
    TooLargeError,
    UnsupportedFormatError,
    UpstreamError,
    UpstreamUnavailableError,
)

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (ForbiddenError, 403),
    (AlreadyRunningError, 429),
    (UnsupportedFormatError, 415),
    (ConflictError, 409),
    (BusyError, 503),
    (UpstreamUnavailableError, 503),
    (UpstreamError, 502),
    (InvalidRequestError, 422),
    (StoredFileChangedError, 500),
]


class PayloadTooLargeError(TooLargeError):
    """An upload exceeds the configured size limit."""


def _status_for(exc: Exception) -> int:
    if isinstance(exc, TooLargeError):
        return 413
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 500


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = _status_for(exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, BusyError) else None
    logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse(
        {
            "detail": f"internal error while handling {request.method} {request.url.path}: {type(exc).__name__}; "
            "the server log (GET /logs/) has the details"
        },
        status_code=500,
    )


async def _missing_file(request: Request, exc: Exception) -> JSONResponse:
    """A file that vanished under a request (an image deleted on disk while a session had it open)."""
    name = str(getattr(exc, "filename", None) or exc)
    logger.warning("%s %s -> 404: file missing: %s", request.method, request.url.path, name)
    shown = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]  # the file's name, never its server path
    return JSONResponse(
        {
            "detail": f"file not found on the server: {shown}; POST /datastore/rescan if studies "
            "changed on disk, then reopen the image"
        },
        status_code=404,
    )


def validation_message(errors: Sequence[Any]) -> str:
    """Pydantic/FastAPI validation errors as one sentence a person can act on: where, and what is wrong."""
    parts = []
    for error in list(errors)[:5]:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)] or ["request"]
        where = f"{loc[0]} '{'.'.join(loc[1:])}'" if loc[0] in ("query", "path", "header") else ".".join(loc)
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 as `{"detail": "<sentence>"}`, the same shape as every other error (not an array)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = validation_message(errors)
    logger.info("%s %s -> 422: %s", request.method, request.url.path, detail)
    return JSONResponse({"detail": detail}, status_code=422)


async def _overflow(request: Request, exc: Exception) -> JSONResponse:
    """A number too large for SQLite or numpy that slipped past validation: the client's mistake, not ours."""
    logger.info("%s %s -> 422: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"a number in the request is out of range ({exc}); integers must fit in 64 bits"},
        status_code=422,
    )


def install_error_handlers(app: FastAPI) -> None:
    for kind, _ in STATUS_BY_ERROR:
        app.add_exception_handler(kind, _domain_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(OverflowError, _overflow)
    app.add_exception_handler(FileNotFoundError, _missing_file)
    app.add_exception_handler(Exception, _unexpected_error)
    document_error_shape(app)


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "what was wrong and what to do instead"}},
    "required": ["detail"],
}
ERROR_STATUSES = {
    "400": "Malformed request",
    "401": "Not authenticated (auth on)",
    "403": "The logged-in user's role does not allow this",
    "404": "Not found",
    "408": "Request body too slow (ANNOTATE_BODY_TIMEOUT_S)",
    "409": "Conflicts with the current state",
    "413": "Too large (upload, JSON body, or volume)",
    "415": "Unsupported file format",
    "422": "Invalid request content",
    "429": "Too many requests, or a one-at-a-time job is running",
    "502": "The PACS answered with an error",
    "503": "Busy or the PACS is unreachable; retry after Retry-After",
}


def document_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI schema say what errors really look like: `{"detail": str}` for every 4xx/5xx."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = ERROR_SCHEMA
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        reference = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                for status, description in ERROR_STATUSES.items():
                    responses[status] = {"description": description, **reference}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
