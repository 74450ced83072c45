"""Session images on disk, each in its own folder with a small JSON record, expiring after last use.

3D Slicer creates a session for a volume it loaded locally, then runs DeepGrow on it by session id. One
uploaded file is the session image; several files (a DICOM series) make a folder that is the image.
Archives are unpacked only when asked (`uncompress=true`) and never outside the session folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from annotation_server.datastore.atomic import atomic_write_bytes
from annotation_server.errors import InvalidRequestError, NotFoundError, TooLargeError
from annotation_server.imaging import read_volume
from annotation_server.imaging.formats import basename
from annotation_server.imaging.headers import ReadLimits

logger = logging.getLogger(__name__)

_RECORD = "session.json"


class SessionInfo(BaseModel):
    """MONAI Label's `session_info` shape."""

    name: str
    path: str
    image: str
    meta: dict[str, Any] = Field(default_factory=dict)
    create_ts: int
    last_access_ts: int
    expiry: int


class SessionStore:
    """Creates, finds and expires sessions under `root`."""

    def __init__(
        self, root: Path, max_expiry_s: int, limits: ReadLimits | None = None, max_extract_bytes: int = 2048 << 20
    ) -> None:
        self.root = root
        self.limits = limits or ReadLimits()
        self.max_extract_bytes = max_extract_bytes  # what an archive may expand to (ANNOTATE_MAX_UPLOAD_MB)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_expiry_s = max_expiry_s
        self._lock = threading.Lock()

    def _folder(self, session_id: str) -> Path:
        try:
            uuid.UUID(session_id)
        except ValueError as exc:
            raise NotFoundError(f"Session ({session_id}) Not Found") from exc
        return self.root / session_id

    def create(
        self,
        uploads: list[tuple[str, Path]],
        expiry: int = 0,
        uncompress: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> tuple[str, SessionInfo]:
        """Make a session from uploaded (client filename, temp path) pairs; the image must be readable."""
        if not uploads:
            raise InvalidRequestError("no files uploaded: send the image as multipart field 'files'")
        session_id = str(uuid.uuid1())
        folder = self.root / session_id
        folder.mkdir(parents=True)
        try:
            image = self._place_files(folder, uploads, uncompress, self.max_extract_bytes)
            read_volume(image, self.limits)  # an unreadable image is refused now, not at the first click
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        now = int(time.time())
        seconds = min(expiry, self.max_expiry_s) if expiry and expiry > 0 else self.max_expiry_s
        info = SessionInfo(
            name=session_id,
            path=str(folder),
            image=str(image),
            meta=meta or {},
            create_ts=now,
            last_access_ts=now,
            expiry=seconds,
        )
        self._write(folder, info)
        logger.info("session %s created for %s", session_id, Path(image).name)
        return session_id, info

    @staticmethod
    def _place_files(folder: Path, uploads: list[tuple[str, Path]], uncompress: bool, max_bytes: int) -> Path:
        if len(uploads) == 1 and not uncompress:
            name, temp = uploads[0]
            target = folder / basename(name)
            shutil.move(str(temp), target)
            return target
        image_dir = folder / "image"
        image_dir.mkdir()
        for name, temp in uploads:
            if uncompress:
                _safe_extract(temp, image_dir, basename(name), max_bytes)
            else:
                shutil.move(str(temp), image_dir / basename(name))
        entries = [p for p in image_dir.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1:  # an archive holding a single file or a single folder
            return entries[0]
        return image_dir

    def _write(self, folder: Path, info: SessionInfo) -> None:
        atomic_write_bytes(folder / _RECORD, info.model_dump_json().encode())

    def get(self, session_id: str, update_ts: bool = False) -> SessionInfo:
        folder = self._folder(session_id)
        record = folder / _RECORD
        if not record.is_file():
            raise NotFoundError(f"Session ({session_id}) Not Found")
        info = SessionInfo.model_validate(json.loads(record.read_text()))
        if self._expired(info):
            self.remove(session_id)
            raise NotFoundError(f"Session ({session_id}) has expired; create a new one with PUT /session/")
        if update_ts:
            info.last_access_ts = int(time.time())
            with self._lock:
                self._write(folder, info)
        return info

    def remove(self, session_id: str) -> SessionInfo:
        folder = self._folder(session_id)
        record = folder / _RECORD
        if not record.is_file():
            raise NotFoundError(f"Session ({session_id}) Not Found")
        info = SessionInfo.model_validate(json.loads(record.read_text()))
        shutil.rmtree(folder, ignore_errors=True)
        return info

    @staticmethod
    def _expired(info: SessionInfo) -> bool:
        return time.time() > info.last_access_ts + info.expiry

    def purge_expired(self) -> int:
        removed = 0
        for folder in list(self.root.iterdir()):
            record = folder / _RECORD
            try:
                info = SessionInfo.model_validate(json.loads(record.read_text()))
            except (OSError, ValueError):
                continue
            if self._expired(info):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed


MAX_ARCHIVE_MEMBERS = 20_000
MAX_EXPANSION_RATIO = 100  # DICOM and NIfTI compress 2-5x; a zip bomb compresses 1000x and more


def _safe_extract(archive: Path, target: Path, name: str, max_bytes: int) -> None:
    """Unpack a zip or tar archive member by member, streamed, refusing members that would land outside
    `target`, links, more than MAX_ARCHIVE_MEMBERS entries, and more than `max_bytes` (or 100x the archive)
    of content. Sizes are counted as bytes are written, never taken from the archive's own directory."""
    root = target.resolve()
    budget = min(max_bytes, max(64 << 20, MAX_EXPANSION_RATIO * archive.stat().st_size))
    written = 0

    def destination(member: str) -> Path:
        path = (root / member).resolve()
        if not path.is_relative_to(root) or path == root:
            raise InvalidRequestError(f"archive '{name}' has entries outside its folder; refusing to unpack")
        return path

    def copy(source: IO[bytes], path: Path) -> None:
        nonlocal written
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > budget:
                    raise TooLargeError(
                        f"archive '{name}' expands to more than {budget >> 20} MB (at most ANNOTATE_MAX_UPLOAD_MB "
                        f"and {MAX_EXPANSION_RATIO}x its size); send the files uncompressed or fewer at a time"
                    )
                out.write(chunk)

    def count(index: int) -> None:
        if index >= MAX_ARCHIVE_MEMBERS:
            raise TooLargeError(f"archive '{name}' has more than {MAX_ARCHIVE_MEMBERS} entries")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for index, info in enumerate(zf.infolist()):
                count(index)
                path = destination(info.filename)
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as source:
                    copy(source, path)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for index, member in enumerate(tf):
                count(index)
                path = destination(member.name)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    source = tf.extractfile(member)
                    if source is not None:
                        copy(source, path)
                else:
                    raise InvalidRequestError(
                        f"archive '{name}' holds '{member.name}', which is not a plain file (a link or device)"
                    )
    else:
        raise InvalidRequestError(f"'{name}' is not a zip or tar archive; send it with uncompress=false")
