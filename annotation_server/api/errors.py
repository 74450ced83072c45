"""Domain errors to HTTP: every client mistake is a 4xx with `{"detail": "<what to do>"}`.

Anything unexpected is logged with its traceback and answered with a 500 that names the log, so the
server keeps running and an admin can find the cause.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from annotation_server.errors import (
    AlreadyRunningError,
    BusyError,
    ConflictError,
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
    name = getattr(exc, "filename", None) or str(exc)
    logger.warning("%s %s -> 404: file missing: %s", request.method, request.url.path, name)
    return JSONResponse(
        {
            "detail": f"file not found on the server: {name}; POST /datastore/rescan if studies "
            "changed on disk, then reopen the image"
        },
        status_code=404,
    )


def install_error_handlers(app: FastAPI) -> None:
    for kind, _ in STATUS_BY_ERROR:
        app.add_exception_handler(kind, _domain_error)
    app.add_exception_handler(FileNotFoundError, _missing_file)
    app.add_exception_handler(Exception, _unexpected_error)
