"""Domain errors.

Services raise these; they know nothing about HTTP. `annotation_server.api.errors` maps each class to
a 4xx status so that a client mistake never surfaces as a bare 500. Every message is written for the
person who made the request: it says what was wrong and what to do instead.
"""

from __future__ import annotations


class AnnotationServerError(Exception):
    """Base class of every error the server raises on purpose."""


class NotFoundError(AnnotationServerError):
    """A named thing (image, label, model, strategy, session) does not exist."""


class InvalidRequestError(AnnotationServerError):
    """The request is well-formed HTTP but its content cannot be used (bad id, bad params)."""


class GeometryMismatchError(InvalidRequestError):
    """A label's voxel grid (shape or affine) differs from the image it belongs to."""


class CorruptFileError(InvalidRequestError):
    """A file has a supported format but cannot be read (truncated, damaged, empty)."""


class TooLargeError(InvalidRequestError):
    """A request or file is larger than a configured limit (upload size, voxel budget, archive size): 413."""


class UnsupportedFormatError(AnnotationServerError):
    """A file's format (by extension or content) is not one the server reads."""


class ConflictError(AnnotationServerError):
    """The request conflicts with the current state (e.g. an image id that already exists)."""


class AlreadyRunningError(ConflictError):
    """A one-at-a-time job (training, scoring) is already running; MONAI Label answers this with 429."""


class UpstreamError(AnnotationServerError):
    """A server we depend on (the PACS behind a DICOMweb datastore) answered with an error: HTTP 502."""


class UpstreamUnavailableError(UpstreamError):
    """A server we depend on cannot be reached or timed out: HTTP 503, worth retrying later."""


class ForbiddenError(AnnotationServerError):
    """The caller is logged in but may not do this to this thing (another user's session, their own label's
    review): HTTP 403, with who may."""


class BusyError(AnnotationServerError):
    """The server is at capacity for this kind of work; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoredFileChangedError(AnnotationServerError):
    """A saved label version's file no longer matches the sha256 recorded when it was saved (HTTP 500).

    Versions are immutable; a changed file means tampering or disk damage, so it is reported, never served.
    """
