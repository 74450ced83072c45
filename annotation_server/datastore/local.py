"""The embedded datastore: a folder of studies plus a SQLite index of versioned labels.

Layout (readable by MONAI Label tooling where that is cheap):

    <studies>/<id>.nii.gz | <id>.nrrd | <id>/ (DICOM series)      the images, as the site provides them
    <studies>/labels/<tag>/<id><ext>                              latest version per tag (a hard link)
    <studies>/.annotation-server/index.sqlite                     our index (WAL)
    <studies>/.annotation-server/versions/<id>/<tag>/v000001<ext> every saved version, immutable
    <studies>/.annotation-server/trash/                           deleted images (moved, not erased)

A save validates the label against its image's grid, places the version file atomically, commits one
index row, then updates the `labels/<tag>/` link. A crash at any step leaves the previous version intact.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from annotation_server.checksums import file_sha256
from annotation_server.datastore.atomic import atomic_link, atomic_move, fsync_dir
from annotation_server.datastore.ids import validate_image_id, validate_tag
from annotation_server.datastore.index import DatastoreIndex
from annotation_server.datastore.records import (
    FINAL_TAG,
    DatastoreStats,
    ImageRecord,
    LabelSource,
    LabelVersion,
    ScanReport,
)
from annotation_server.datastore.scanner import LABELS_DIRNAME, DiscoveredStudy, discover_studies
from annotation_server.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StoredFileChangedError,
    UnsupportedFormatError,
)
from annotation_server.imaging import Geometry, Volume, read_geometry, read_volume, write_volume
from annotation_server.imaging.conform import conform_label
from annotation_server.imaging.formats import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, split_extension
from annotation_server.imaging.headers import ReadLimits

logger = logging.getLogger(__name__)

STATE_DIRNAME = ".annotation-server"
DICOM_DOWNLOAD_EXT = ".nii.gz"


def _check_label_values(array: np.ndarray, allowed: frozenset[int] | None = None) -> None:
    """Labels hold non-negative whole numbers (segment ids) of the app's label set; anything else is a
    mistaken upload (and would be queued for training as a class no model has)."""
    if array.dtype.kind == "b":
        return
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (np.round(array) == array)):
        raise InvalidRequestError("label has fractional or non-finite voxel values; save a labelmap of whole numbers")
    if array.size and array.min() < 0:
        raise InvalidRequestError("label has negative voxel values; segment values must be 0 (background) or more")
    if allowed is None or not array.size:
        return
    top = int(array.max())
    if top < 1 << 16:  # a histogram is ~10x faster than np.unique on a full CT-sized label
        present = np.flatnonzero(np.bincount(np.asarray(array, dtype=np.int64).ravel(), minlength=1))
    else:
        present = np.unique(array).astype(np.int64)
    bad = sorted(int(v) for v in present if int(v) not in allowed)
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InvalidRequestError(
            f"label has voxel values {shown} outside this app's label set {sorted(allowed)}; "
            "relabel them (GET /info/ lists the labels and their values) or set them to 0"
        )


class LocalDatastore:
    """Folder + SQLite datastore. Thread-safe; one instance per server."""

    def __init__(self, root: Path, state_dir: Path | None = None, limits: ReadLimits | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or ReadLimits()  # voxel budget for every file read: uploads and the studies folder
        # Voxel values a saved label may hold (0 and the app's and models' label values); None: any.
        self.allowed_label_values: frozenset[int] | None = None
        self.root = root.resolve()
        self.state_dir = (state_dir or self.root / STATE_DIRNAME).resolve()
        self.versions_dir = self.state_dir / "versions"
        self.tmp_dir = self.state_dir / "tmp"
        self.trash_dir = self.state_dir / "trash"
        for folder in (self.versions_dir, self.tmp_dir, self.trash_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._clear_stale_temp_files()
        self.index = DatastoreIndex(self.state_dir / "index.sqlite")
        self._write_lock = threading.Lock()
        self._scan_lock = threading.Lock()
        # Called with (saved version, its voxels on the image grid) after every save, e.g. by the federated queue.
        self.label_saved: list[Callable[[LabelVersion, np.ndarray], None]] = []
        # Called with (image id, tag) after a label is retired or its image deleted.
        self.label_retired: list[Callable[[str, str], None]] = []

    def close(self) -> None:
        self.index.close()

    # ---------------------------------------------------------------------------------------- scanning
    def rescan(self) -> ScanReport:
        """Reconcile the index with the folder: add new studies, drop vanished ones, import MONAI Label labels.

        Labels of a vanished image stay in the index, so they are back when the image file returns.
        """
        with self._scan_lock:
            known = self.index.image_file_states()
            known_dicom = {relpath for relpath, size, _ in known.values() if size == 0}
            found = discover_studies(self.root, known_dicom)
            added = [i for i in found if i not in known]
            removed = [i for i in known if i not in found]
            changed = [i for i in found if i in known and self._study_changed(found[i], known[i])]
            now = time.time()
            with self.index.transaction() as conn:
                for image_id in (*added, *changed):
                    self.index.upsert_image(self._record_from_study(found[image_id], now), conn)
                if removed:
                    self.index.delete_images(removed, conn)
            imported = self._import_external_labels()
        if added or removed or imported:
            logger.info(
                "datastore %s: %d studies (+%d, -%d), %d labels imported",
                self.root,
                len(found),
                len(added),
                len(removed),
                imported,
            )
        return ScanReport(total=len(found), added=sorted(added), removed=sorted(removed), imported_labels=imported)

    @staticmethod
    def _study_changed(study: DiscoveredStudy, known: tuple[str, int, float]) -> bool:
        relpath, size, mtime = known
        return study.relpath != relpath or study.size != size or abs(study.mtime - mtime) > 1e-6

    @staticmethod
    def _record_from_study(study: DiscoveredStudy, now: float) -> ImageRecord:
        return ImageRecord(
            id=study.id,
            name=study.name,
            ext=study.ext,
            relpath=study.relpath,
            kind=study.kind,  # type: ignore[arg-type]
            size=study.size,
            mtime=study.mtime,
            added_ts=now,
            info={"ts": int(now), "name": study.name},
        )

    def _import_external_labels(self) -> int:
        """Adopt `labels/<tag>/<id><ext>` files (e.g. from a MONAI Label datastore) that have no version yet."""
        labels_root = self.root / LABELS_DIRNAME
        if not labels_root.is_dir():
            return 0
        imported = 0
        image_ids = {r.id for r in self.index.list_images()}
        versioned = self.index.version_keys()
        for tag_dir in sorted(p for p in labels_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(p for p in tag_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
                try:
                    image_id, _ = split_extension(path.name, LABEL_EXTENSIONS)
                    validate_tag(tag_dir.name)
                except Exception:
                    continue
                if image_id not in image_ids or (image_id, tag_dir.name) in versioned:
                    continue
                temp = self._temp_path(path.name)
                shutil.copyfile(path, temp)
                try:
                    self.save_label(
                        image_id,
                        temp,
                        path.name,
                        tag=tag_dir.name,
                        author="imported",
                        info={"imported_from": str(path.relative_to(self.root))},
                    )
                    imported += 1
                except Exception as exc:  # a bad legacy file must not stop the server from starting
                    logger.warning("not importing label %s: %s", path, exc)
                finally:
                    temp.unlink(missing_ok=True)
        return imported

    def _clear_stale_temp_files(self, older_than_s: float = 3600.0) -> None:
        """Remove uploads a crash left behind. Only old ones: another process (a training job, an NVFlare
        site client) may open this datastore while the server is writing a fresh temporary file."""
        cutoff = time.time() - older_than_s
        for path in self.tmp_dir.iterdir():
            try:
                if path.stat().st_mtime > cutoff:
                    continue
            except OSError:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ images
    def _temp_path(self, filename: str) -> Path:
        """A unique temporary path on the datastore's file system that keeps `filename`'s extension."""
        return self.tmp_dir / f"{uuid.uuid4().hex}-{Path(filename.replace(chr(92), '/')).name}"

    def new_upload_path(self, filename: str) -> Path:
        """Where the API layer streams an upload, so placing it later is a rename, not a copy."""
        return self._temp_path(filename)

    def get_image(self, image_id: str) -> ImageRecord:
        validate_image_id(image_id)
        record = self.index.get_image(image_id)
        if record is None:
            self.rescan()  # a study dropped into the folder since the last scan is found on first request
            record = self.index.get_image(image_id)
        if record is None:
            raise NotFoundError(
                f"image '{image_id}' not found in the datastore; list ids with GET /datastore/?output=all"
            )
        return record

    def image_path(self, image_id: str) -> Path:
        record = self.get_image(image_id)
        path = self.root / record.relpath
        if not path.exists():
            raise NotFoundError(
                f"image '{image_id}' is indexed but its file is gone; POST /datastore/rescan to refresh"
            )
        return path

    def image_geometry(self, image_id: str) -> Geometry:
        cached = self.index.get_geometry(image_id)
        if cached is not None:
            return Geometry.from_json(cached)
        geometry = read_geometry(self.image_path(image_id), self.limits)
        self.index.set_geometry(image_id, geometry.to_json())
        return geometry

    def list_images(self) -> list[ImageRecord]:
        return self.index.list_images()

    def add_image(
        self,
        upload: Path,
        filename: str,
        image_id: str | None = None,
        info: dict[str, Any] | None = None,
        author: str = "unknown",
    ) -> ImageRecord:
        """Add an uploaded image file (already streamed to `upload`) under `image_id` (default: file stem).

        Re-uploading identical bytes is a no-op. Replacing an image that has saved labels is refused, because
        the labels were drawn on the old voxels.
        """
        stem, ext = split_extension(filename, IMAGE_EXTENSIONS)
        image_id = validate_image_id(image_id or stem)
        staged = upload.with_name(upload.name + ext) if not upload.name.endswith(ext) else upload
        if staged != upload:
            upload.rename(staged)
        read_volume(staged, self.limits)  # refuse unreadable files before they enter the store
        target = self.root / f"{image_id}{ext}"
        with self._write_lock:
            existing = self.index.get_image(image_id)
            if existing is not None:
                old_path = self.root / existing.relpath
                if old_path.is_file() and existing.ext == ext and file_sha256(old_path) == file_sha256(staged):
                    staged.unlink(missing_ok=True)
                    return existing
                if self.index.tags_with_heads(image_id):
                    staged.unlink(missing_ok=True)
                    raise ConflictError(
                        f"image '{image_id}' already exists with saved labels; upload under a new id or delete it first"
                    )
                self._move_to_trash(old_path)
            atomic_move(staged, target)
            stat = target.stat()
            now = time.time()
            record = ImageRecord(
                id=image_id,
                name=target.name,
                ext=ext,
                relpath=target.name,
                kind="file",
                size=stat.st_size,
                mtime=stat.st_mtime,
                added_ts=now,
                info={**(info or {}), "ts": int(now), "name": target.name, "user": author},
            )
            self.index.upsert_image(record)
            self.index.set_image_info(image_id, record.info)
        logger.info("image %s added (%s, by %s)", image_id, target.name, author)
        return record

    def delete_image(self, image_id: str) -> None:
        """Remove an image from service. Its file moves to the trash and its label versions are kept on disk."""
        record = self.get_image(image_id)
        with self._write_lock:
            self._move_to_trash(self.root / record.relpath)
            heads = self.index.heads_for_image(image_id)
            for head in heads:
                (self.root / LABELS_DIRNAME / head.tag / f"{image_id}{head.ext}").unlink(missing_ok=True)
            with self.index.transaction() as conn:
                self.index.tombstone_all(conn, image_id)
                self.index.delete_images([image_id], conn)
        logger.info("image %s deleted (moved to %s)", image_id, self.trash_dir)
        self._notify_retired(image_id, [head.tag for head in heads])

    def _move_to_trash(self, path: Path) -> None:
        if not path.exists():
            return
        target = self.trash_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-{path.name}"
        shutil.move(str(path), str(target))
        fsync_dir(path.parent)

    @staticmethod
    def download_name(record: ImageRecord) -> str:
        """The file name a client should save a download as (DICOM series are served as NIfTI)."""
        return record.name if record.kind == "file" else f"{record.id}{DICOM_DOWNLOAD_EXT}"

    def image_download(self, image_id: str) -> tuple[Path, str]:
        """(file to send, file name) for GET /datastore/image.

        A DICOM series is converted once to NIfTI on the same grid (cached until the folder changes), so
        viewers that load one file (3D Slicer's next-sample download) work, and labels drawn on the
        conversion fit the series.
        """
        record = self.get_image(image_id)
        path = self.image_path(image_id)
        if record.kind == "file":
            return path, record.name
        converted = self.state_dir / "converted" / f"{record.id}{DICOM_DOWNLOAD_EXT}"
        if not converted.is_file() or converted.stat().st_mtime < path.stat().st_mtime:
            volume = read_volume(path, self.limits)
            staged = self._temp_path(converted.name)
            write_volume(volume.array, volume.geometry, staged)
            atomic_move(staged, converted)
        return converted, self.download_name(record)

    def image_info(self, image_id: str) -> dict[str, Any]:
        record = self.get_image(image_id)
        return {**record.info, "name": self.download_name(record), "path": str(self.root / record.relpath)}

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> dict[str, Any]:
        record = self.get_image(image_id)
        merged = {**record.info, **info}
        self.index.set_image_info(image_id, merged)
        return merged

    # ------------------------------------------------------------------------------------------ labels
    def save_label(
        self,
        image_id: str,
        upload: Path,
        filename: str,
        tag: str = FINAL_TAG,
        author: str = "unknown",
        info: dict[str, Any] | None = None,
        source: LabelSource | None = None,
    ) -> LabelVersion:
        """Save an uploaded label file as a new version after checking it lies on its image's grid."""
        self.get_image(image_id)
        tag = validate_tag(tag or FINAL_TAG)
        _, ext = split_extension(filename, LABEL_EXTENSIONS)
        staged = upload if upload.name.endswith(ext) else upload.rename(upload.with_name(upload.name + ext))
        label = read_volume(staged, self.limits)
        image_geometry = self.image_geometry(image_id)
        # Only 3D Slicer's segmentation format is saved cropped to its extent by design.
        array = conform_label(label.array, label.geometry, image_geometry, allow_subgrid=ext == ".seg.nrrd")
        _check_label_values(label.array, self.allowed_label_values)
        if array is not label.array:  # a cropped sub-grid was padded: write the full-grid label instead
            padded = self._temp_path(f"padded{ext}")
            write_volume(array, image_geometry, padded)
            staged.unlink(missing_ok=True)
            staged = padded
        return self._commit_label(image_id, tag, ext, staged, author, info, source, array)

    def save_label_array(
        self,
        image_id: str,
        array: np.ndarray,
        tag: str = FINAL_TAG,
        author: str = "unknown",
        info: dict[str, Any] | None = None,
        source: LabelSource | None = None,
        reference: Volume | None = None,
        ext: str = ".nii.gz",
    ) -> LabelVersion:
        """Save a label computed on the server (inference, interactive session) as a new version."""
        record = self.get_image(image_id)
        tag = validate_tag(tag or FINAL_TAG)
        geometry = self.image_geometry(image_id)
        if tuple(array.shape) != geometry.shape:
            raise InvalidRequestError(
                f"label shape {tuple(array.shape)} differs from image '{record.id}' shape {geometry.shape}"
            )
        _check_label_values(array, self.allowed_label_values)
        staged = self._temp_path(f"label{ext}")
        write_volume(array, geometry, staged, reference=reference)
        return self._commit_label(image_id, tag, ext, staged, author, info, source, array)

    def _commit_label(
        self,
        image_id: str,
        tag: str,
        ext: str,
        staged: Path,
        author: str,
        info: dict[str, Any] | None,
        source: LabelSource | None,
        array: np.ndarray,
    ) -> LabelVersion:
        digest = file_sha256(staged)
        size = staged.stat().st_size
        folder = self.versions_dir / image_id / tag
        with self._write_lock, self.index.transaction() as conn:
            version = self.index.next_version(conn, image_id, tag)
            target = folder / f"v{version:06d}{ext}"
            now = time.time()
            label = LabelVersion(
                image_id=image_id,
                tag=tag,
                version=version,
                ext=ext,
                relpath=str(target.relative_to(self.state_dir)),
                author=author,
                created_ts=now,
                source=source or LabelSource(),
                sha256=digest,
                size=size,
                info={**(info or {}), "ts": int(now), "name": f"{image_id}{ext}"},
            )
            atomic_move(staged, target)  # the version file is complete on disk before its row commits
            self.index.insert_label(conn, label)
        self._publish_head(label)
        logger.info("label %s/%s v%d saved by %s", image_id, tag, version, author)
        for callback in self.label_saved:
            try:
                callback(label, array)
            except Exception:  # the label is saved; a failing subscriber must not turn that into an error
                logger.exception("label_saved callback failed for %s/%s v%d", image_id, tag, version)
        return label

    def _publish_head(self, label: LabelVersion) -> None:
        """Point `labels/<tag>/<id><ext>` at the newest version (MONAI Label tooling reads that path)."""
        tag_dir = self.root / LABELS_DIRNAME / label.tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        for other in LABEL_EXTENSIONS:
            if other != label.ext:
                (tag_dir / f"{label.image_id}{other}").unlink(missing_ok=True)
        atomic_link(self.state_dir / label.relpath, tag_dir / f"{label.image_id}{label.ext}")

    def repair_published_heads(self) -> int:
        """Point every `labels/<tag>/<id><ext>` at its head version again, as the index says.

        A save commits the index row before it updates that link, so a crash (kill -9) in between leaves the
        file MONAI Label tools read one version behind. The server runs it at start (not every opener: a
        training job opening the store while the server saves must not race it); returns how many it repaired.
        """
        repaired = 0
        for heads in self.index.all_heads().values():
            for head in heads:
                version_file = self.state_dir / head.relpath
                link = self.root / LABELS_DIRNAME / head.tag / f"{head.image_id}{head.ext}"
                if not version_file.is_file():
                    logger.error(
                        "label %s/%s v%d: version file %s is missing",
                        head.image_id,
                        head.tag,
                        head.version,
                        version_file,
                    )
                    continue
                try:
                    if link.is_file() and (os.path.samefile(link, version_file) or file_sha256(link) == head.sha256):
                        continue
                except OSError:
                    pass
                self._publish_head(head)
                repaired += 1
                logger.warning("label %s/%s: %s repaired to v%d", head.image_id, head.tag, link, head.version)
        return repaired + self._remove_retired_links()

    def _remove_retired_links(self) -> int:
        """A kill between retiring a label (index) and removing its link leaves a file for a label that no
        longer counts; remove it (its versions stay in the history)."""
        labels_root = self.root / LABELS_DIRNAME
        if not labels_root.is_dir():
            return 0
        with_heads = {(h.image_id, h.tag) for heads in self.index.all_heads().values() for h in heads}
        versioned = self.index.version_keys()
        removed = 0
        for tag_dir in (p for p in labels_root.iterdir() if p.is_dir()):
            for path in (p for p in tag_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
                try:
                    image_id, _ = split_extension(path.name, LABEL_EXTENSIONS)
                except UnsupportedFormatError:
                    continue
                key = (image_id, tag_dir.name)
                if key in versioned and key not in with_heads:
                    path.unlink(missing_ok=True)
                    removed += 1
                    logger.warning("label %s/%s was retired: removed its leftover %s", *key, path)
        return removed

    def label_head(self, image_id: str, tag: str = FINAL_TAG) -> LabelVersion:
        validate_image_id(image_id)
        tag = validate_tag(tag or FINAL_TAG)
        head = self.index.head(image_id, tag)
        if head is None:
            raise NotFoundError(f"no '{tag}' label saved for image '{image_id}'")
        return head

    def label_version(self, image_id: str, tag: str, version: int | None = None) -> LabelVersion:
        if version is None:
            return self.label_head(image_id, tag)
        label = self.index.get_version(validate_image_id(image_id), validate_tag(tag), version)
        if label is None:
            raise NotFoundError(f"label '{image_id}' tag '{tag}' has no version {version}")
        return label

    def label_file(self, label: LabelVersion, verify: bool = True) -> Path:
        """The version's file, after checking it still has the sha256 recorded at save time.

        `verify=False` only where the path is handed on unread (a training datalist).
        """
        path = self.state_dir / label.relpath
        if verify and label.sha256 and file_sha256(path) != label.sha256:
            logger.error(
                "label %s/%s v%d: %s changed since it was saved", label.image_id, label.tag, label.version, path
            )
            raise StoredFileChangedError(
                f"label '{label.image_id}' tag '{label.tag}' version {label.version} was changed on disk after it "
                "was saved (its sha256 differs from the one recorded); it is not served. An admin should restore "
                "it from backup; other versions are unaffected"
            )
        return path

    def label_versions(self, image_id: str, tag: str | None = None) -> list[LabelVersion]:
        validate_image_id(image_id)
        return self.index.versions(image_id, validate_tag(tag) if tag else None)

    def delete_label(self, image_id: str, tag: str) -> None:
        """Retire a label: it no longer counts (e.g. as `final`), but every version stays in the history."""
        head = self.label_head(image_id, tag)
        with self._write_lock:
            self.index.tombstone_head(image_id, head.tag)
            (self.root / LABELS_DIRNAME / head.tag / f"{image_id}{head.ext}").unlink(missing_ok=True)
        logger.info("label %s/%s retired (versions kept)", image_id, tag)
        self._notify_retired(image_id, [head.tag])

    def _notify_retired(self, image_id: str, tags: list[str]) -> None:
        for tag in tags:
            for callback in self.label_retired:
                try:
                    callback(image_id, tag)
                except Exception:  # the retirement is done; a failing subscriber must not turn it into an error
                    logger.exception("label_retired callback failed for %s/%s", image_id, tag)

    def update_label_info(self, image_id: str, tag: str, info: dict[str, Any]) -> dict[str, Any]:
        head = self.label_head(image_id, tag)
        merged = {**head.info, **info}
        self.index.set_label_info(head, merged)
        return merged

    # --------------------------------------------------------------------------------------- listings
    def stats(self) -> DatastoreStats:
        return self.index.stats()

    def dump(self) -> dict[str, Any]:
        """MONAI Label's `GET /datastore/?output=all` document."""
        heads = self.index.all_heads()
        objects: dict[str, Any] = {}
        for record in self.index.list_images():
            objects[record.id] = {
                "image": {"ext": record.ext, "info": {**record.info, "name": record.name}},
                "labels": {
                    h.tag: {"ext": h.ext, "info": {**h.info, "version": h.version, "author": h.author}}
                    for h in heads.get(record.id, [])
                },
            }
        return {
            "name": self.root.name,
            "description": f"Studies in {self.root.name}",  # the folder's name, not its server path
            "images_dir": ".",
            "labels_dir": LABELS_DIRNAME,
            "objects": objects,
        }

    def train_pairs(self) -> list[dict[str, str]]:
        """(image, latest final label) absolute paths, the training datalist."""
        heads = self.index.all_heads()
        pairs = []
        for record in self.index.list_images():
            final = next((h for h in heads.get(record.id, []) if h.tag == FINAL_TAG), None)
            if final is not None:
                pairs.append(
                    {"image": str(self.root / record.relpath), "label": str(self.label_file(final, verify=False))}
                )
        return pairs

    # ------------------------------------------------------------------------------ next-sample queries
    def first_unlabeled(self, last: bool = False, exclude: tuple[str, ...] = ()) -> str | None:
        return self.index.first_unlabeled(descending=last, exclude=exclude)

    def unlabeled_ids(self, exclude: tuple[str, ...] = ()) -> list[str]:
        return self.index.unlabeled_ids(exclude=exclude)

    def random_unlabeled(self, strategy: str, rng: random.Random, exclude: tuple[str, ...] = ()) -> str | None:
        """Weighted by how long ago this strategy last offered each image, so annotators rarely collide."""
        candidates = [(i, ts) for i, ts in self.index.unlabeled_with_last_pick(strategy) if i not in exclude]
        if not candidates:
            return None
        now = time.time()
        weights = [max(now - ts, 1e-3) for _, ts in candidates]
        return rng.choices([i for i, _ in candidates], weights=weights, k=1)[0]

    def record_pick(self, strategy: str, image_id: str, client_id: str | None) -> dict[str, Any]:
        ts = self.index.record_pick(strategy, image_id, client_id)
        return {"ts": int(ts), "client_id": client_id}

    def strategy_info(self, image_id: str) -> dict[str, Any]:
        return self.index.picks_for_image(image_id)
