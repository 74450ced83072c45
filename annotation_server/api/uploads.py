"""Reading what clients upload: files streamed to disk with a size limit, and JSON `params` form fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import UploadFile

from annotation_server.api import strict_json
from annotation_server.api.errors import PayloadTooLargeError
from annotation_server.errors import InvalidRequestError
from annotation_server.imaging.formats import basename

_CHUNK = 1 << 20


async def save_upload(upload: UploadFile, target: Path, max_bytes: int) -> Path:
    """Stream `upload` to `target`, refusing (413) anything larger than `max_bytes`."""
    written = 0
    try:
        with target.open("wb") as out:
            while chunk := await upload.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise PayloadTooLargeError(
                        f"upload '{upload_name(upload)}' exceeds the {max_bytes // (1 << 20)} MB limit "
                        "(ANNOTATE_MAX_UPLOAD_MB)"
                    )
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if written == 0:
        target.unlink(missing_ok=True)
        raise InvalidRequestError(f"upload '{upload_name(upload)}' is empty")
    return target


def upload_name(upload: UploadFile, default: str = "upload.nii.gz") -> str:
    """The client's file name without any folder part (3D Slicer sends full local paths)."""
    return basename(upload.filename or "") or default


def parse_json_object(text: str | None, field: str = "params") -> dict[str, Any]:
    """Parse a form field that must hold a JSON object; a clear 422 otherwise."""
    if text is None or text.strip() == "":
        return {}
    value = strict_json.loads(text, field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"'{field}' must be a JSON object like {{\"key\": value}}, got {type(value).__name__}"
        )
    return value
