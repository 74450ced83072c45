"""A datastore whose images live in a PACS (DICOMweb), as OHIF's MONAI Label plugin expects.

Image ids are SeriesInstanceUIDs. The listing comes from QIDO-RS and is kept in a local index, so the
server keeps listing and serving labels while the PACS is down. A series is fetched with WADO-RS into a
local cache folder on first use and read as a volume from there.

Labels are versioned exactly as in the local datastore, because they *are* in one: a `LocalDatastore`
over the cache folder holds the index, the versions and the cached series (composition: one
implementation of versioning). Every saved `final` label is then also written back to the PACS as a
DICOM SEG with a new SOPInstanceUID per version (a PACS keeps the first copy of a re-sent UID). The local
version is committed before the write-back starts, so a PACS failure never loses a label: the version's
info records `dicom_seg.status = "pending"` with the error, and the write-back is retried on the next
save and on every rescan.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from annotation_server.datastore.ids import validate_image_id
from annotation_server.datastore.local import LocalDatastore
from annotation_server.datastore.records import (
    FINAL_TAG,
    DatastoreStats,
    ImageRecord,
    LabelSource,
    LabelVersion,
    ScanReport,
)
from annotation_server.dicomweb.client import PacsAuth, PacsClient
from annotation_server.dicomweb.seg import SegOrigin, build_seg, stable_uid
from annotation_server.errors import AnnotationServerError, InvalidRequestError, NotFoundError
from annotation_server.imaging import Geometry, Volume, read_volume

logger = logging.getLogger(__name__)

# Series that are not images to annotate (derived objects, documents, our own SEGs).
ORIGINAL_TAG = "original"  # MONAI Label's tag for a model's own output (batch inference, pre-annotation)
WRITE_BACK_TAGS = (FINAL_TAG, ORIGINAL_TAG)  # the labels that become SEGs in the PACS
RAW_LABEL_EXT = ".bin"  # OHIF v3 sends labels as raw voxels named label.bin
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG", "DOC"})
_INFO_TAGS = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080060": "Modality",
    "0008103E": "SeriesDescription",
    "00200011": "SeriesNumber",
    "00100020": "PatientID",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00081030": "StudyDescription",
    "00201209": "NumberOfSeriesRelatedInstances",
    "00180015": "BodyPartExamined",
}


def _series_info(item: Mapping[str, Any]) -> dict[str, Any]:
    """The few QIDO fields worth keeping with an image record (DICOM JSON to plain values)."""
    info: dict[str, Any] = {}
    for tag, name in _INFO_TAGS.items():
        values = item.get(tag, {}).get("Value")
        if values:
            value = values[0]
            info[name] = value if isinstance(value, int | float) else str(value)
    return info


series_info = _series_info  # public name for the PACS watcher


class DicomWebDatastore:
    """A PACS's image series plus local versioned labels, written back to the PACS as DICOM SEG."""

    def __init__(self, client: PacsClient, cache_dir: Path, label_names: Mapping[str, int]) -> None:
        self.client = client
        self.local = LocalDatastore(cache_dir)
        self.label_names = dict(label_names)
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._writeback_lock = threading.Lock()

    # The parts of LocalDatastore other services use directly (federated queue, scoring cache, summaries).
    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def state_dir(self) -> Path:
        return self.local.state_dir

    @property
    def index(self) -> Any:
        return self.local.index

    @property
    def label_saved(self) -> list[Any]:
        return self.local.label_saved

    @property
    def label_retired(self) -> list[Any]:
        return self.local.label_retired

    def close(self) -> None:
        self.local.close()
        self.client.close()

    # ---------------------------------------------------------------------------------------- listing
    def rescan(self) -> ScanReport:
        """Refresh the series list from QIDO-RS, then retry label write-backs still pending."""
        series = [s for s in self.client.search_series() if self._is_image_series(s)]
        found = {info["SeriesInstanceUID"]: info for info in map(_series_info, series)}
        known = {r.id: r for r in self.local.list_images()}
        added = sorted(set(found) - set(known))
        removed = sorted(set(known) - set(found))
        now = time.time()
        with self.index.transaction() as conn:
            for uid in added:
                self.index.upsert_image(self._record(uid, found[uid], now), conn)
            if removed:
                self.index.delete_images(removed, conn)
        for uid in added:
            self.index.set_image_info(uid, {**found[uid], "ts": int(now), "name": uid})
        if added or removed:
            logger.info("PACS %s: %d series (+%d, -%d)", self.client.url, len(found), len(added), len(removed))
        self.retry_pending_writebacks()
        return ScanReport(total=len(found), added=added, removed=removed, imported_labels=0)

    @staticmethod
    def _is_image_series(item: Mapping[str, Any]) -> bool:
        info = _series_info(item)
        return bool(info.get("SeriesInstanceUID")) and info.get("Modality", "") not in NON_IMAGE_MODALITIES

    @staticmethod
    def _record(uid: str, info: dict[str, Any], now: float) -> ImageRecord:
        return ImageRecord(
            id=uid, name=uid, ext="", relpath=uid, kind="dicom", size=0, mtime=0.0, added_ts=now, info=info
        )

    def list_images(self) -> list[ImageRecord]:
        return self.local.list_images()

    def get_image(self, image_id: str) -> ImageRecord:
        validate_image_id(image_id)
        record = self.index.get_image(image_id)
        if record is None:
            found = self.client.search_series({"SeriesInstanceUID": image_id})
            series = [s for s in found if self._is_image_series(s)]
            if not series:
                raise NotFoundError(
                    f"series '{image_id}' is not in the PACS at {self.client.url}; image ids are SeriesInstanceUIDs "
                    "(list them with GET /datastore/?output=all)"
                )
            now = time.time()
            info = _series_info(series[0])
            self.index.upsert_image(self._record(image_id, info, now))
            self.index.set_image_info(image_id, {**info, "ts": int(now), "name": image_id})
            record = self.index.get_image(image_id)
            assert record is not None
        return record

    # -------------------------------------------------------------------------------- series fetching
    def _lock_for(self, image_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._fetch_locks.setdefault(image_id, threading.Lock())

    def ensure_local(self, image_id: str) -> Path:
        """The series' cache folder, fetched with WADO-RS (as stored, e.g. JPEG 2000) on first use."""
        record = self.get_image(image_id)
        folder = self.root / record.relpath
        if folder.is_dir():
            return folder
        with self._lock_for(image_id):
            if folder.is_dir():
                return folder
            study_uid = str(record.info.get("StudyInstanceUID") or "")
            if not study_uid:
                raise NotFoundError(f"series '{image_id}' has no StudyInstanceUID in the index; POST /datastore/rescan")
            started = time.perf_counter()
            staging = self.local.tmp_dir / f"fetch-{uuid.uuid4().hex}"
            staging.mkdir(parents=True)
            try:
                count = 0
                for ds in self.client.iter_series(study_uid, image_id):
                    name = str(ds.get("SOPInstanceUID", "") or f"instance-{count}")
                    ds.save_as(staging / f"{name}.dcm", enforce_file_format=True)
                    count += 1
                if count == 0:
                    raise NotFoundError(f"the PACS returned no instances for series '{image_id}'")
                staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            logger.info("fetched series %s (%d instances) in %.2fs", image_id, count, time.perf_counter() - started)
        return folder

    def image_path(self, image_id: str) -> Path:
        self.ensure_local(image_id)
        return self.local.image_path(image_id)

    def image_geometry(self, image_id: str) -> Geometry:
        self.ensure_local(image_id)
        return self.local.image_geometry(image_id)

    def image_download(self, image_id: str) -> tuple[Path, str]:
        self.ensure_local(image_id)
        return self.local.image_download(image_id)

    def image_info(self, image_id: str) -> dict[str, Any]:
        """Index info plus the study keys OHIF's Next Sample dialog shows (and reloads the page with)."""
        self.get_image(image_id)
        info = {**self.local.image_info(image_id), "source": self.client.url}
        if "StudyTime" not in info or "StudyInstanceUID" not in info:  # indexed before these were kept
            try:
                found = self.client.search_series({"SeriesInstanceUID": image_id})
            except AnnotationServerError as exc:
                logger.warning("study fields of %s not refreshed: %s", image_id, exc)
                found = []
            if found:
                fresh = {k: v for k, v in _series_info(found[0]).items() if k not in info}
                info.update(fresh)
                self.local.update_image_info(image_id, fresh)
        info.setdefault("StudyTime", "")
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> dict[str, Any]:
        self.get_image(image_id)
        return self.local.update_image_info(image_id, info)

    def new_upload_path(self, filename: str) -> Path:
        return self.local.new_upload_path(filename)

    def add_image(
        self,
        upload: Path,
        filename: str,
        image_id: str | None = None,
        info: dict[str, Any] | None = None,
        author: str = "unknown",
    ) -> ImageRecord:
        raise InvalidRequestError(
            f"images come from the PACS at {self.client.url}; store the series there (DICOM C-STORE or STOW-RS), "
            "then POST /datastore/rescan"
        )

    def delete_image(self, image_id: str) -> None:
        raise InvalidRequestError(
            f"images of a DICOMweb datastore are deleted in the PACS at {self.client.url}, not through this server"
        )

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
        self.ensure_local(image_id)
        if filename.lower().endswith(RAW_LABEL_EXT):
            array = self._raw_label(image_id, upload)
            return self.save_label_array(image_id, array, tag, author, info, source)
        label = self.local.save_label(image_id, upload, filename, tag, author, info, source)
        return self._after_save(label, None)

    def _raw_label(self, image_id: str, upload: Path) -> np.ndarray:
        """OHIF v3's `label.bin`: the labelmap as raw uint8 bytes, column fastest, then row, then slice."""
        shape = self.local.image_geometry(image_id).shape
        data = upload.read_bytes()
        expected = int(np.prod(shape))
        if len(data) != expected:
            raise InvalidRequestError(
                f"raw label has {len(data)} bytes but series '{image_id}' has {expected} voxels "
                f"({shape[0]} columns x {shape[1]} rows x {shape[2]} slices, one uint8 each); send the whole labelmap"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(shape[::-1]).transpose(2, 1, 0).copy()

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
        self.ensure_local(image_id)
        label = self.local.save_label_array(image_id, array, tag, author, info, source, reference, ext)
        return self._after_save(label, array)

    def _after_save(self, label: LabelVersion, array: np.ndarray | None) -> LabelVersion:
        """Write a saved final (or model `original`) label back as a SEG; on failure it stays saved, marked pending."""
        if label.tag not in WRITE_BACK_TAGS:
            return label
        self.retry_pending_writebacks(skip=(label.image_id,))
        return self._write_back(label, array)

    def _write_back(self, label: LabelVersion, array: np.ndarray | None) -> LabelVersion:
        started = time.perf_counter()
        series_uid = stable_uid("seg-series", label.image_id, label.tag)
        sop_uid = stable_uid("seg", label.image_id, label.tag, str(label.version), label.sha256)
        state: dict[str, Any] = {"series_instance_uid": series_uid, "sop_instance_uid": sop_uid, "ts": int(time.time())}
        try:
            with self._writeback_lock:
                seg = self._seg_for(label, array, series_uid, sop_uid)
                self.client.store([seg])
            state.update(status="stored", seconds=round(time.perf_counter() - started, 3))
            logger.info(
                "label %s/%s v%d written to the PACS as SEG %s", label.image_id, label.tag, label.version, sop_uid
            )
        except AnnotationServerError as exc:
            state.update(status="pending", error=str(exc))
            logger.warning(
                "label %s/%s v%d is saved locally but not yet in the PACS (retried on the next save or rescan): %s",
                label.image_id,
                label.tag,
                label.version,
                exc,
            )
        except Exception as exc:  # the version is committed; a SEG bug must not turn the save into an error
            state.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            logger.exception("DICOM SEG write-back of %s/%s v%d failed", label.image_id, label.tag, label.version)
        info = {**label.info, "dicom_seg": state}
        self.index.set_label_info(label, info)
        return label.model_copy(update={"info": info})

    def _seg_for(self, label: LabelVersion, array: np.ndarray | None, series_uid: str, sop_uid: str) -> pydicom.Dataset:
        folder = self.ensure_local(label.image_id)
        geometry = self.local.image_geometry(label.image_id)
        if array is None:
            array = read_volume(self.local.label_file(label)).array
        return build_seg(
            array,
            geometry,
            folder,
            self.label_names,
            # `original` is the model's output alone (AUTOMATIC); `final` was made or corrected by a person
            SegOrigin(
                model=label.source.model, model_version=label.source.model_version, manual=label.tag != ORIGINAL_TAG
            ),
            series_uid=series_uid,
            sop_uid=sop_uid,
            instance_number=label.version,
            series_description=f"annotation-server {label.tag} label",
        )

    def retry_pending_writebacks(self, skip: tuple[str, ...] = ()) -> int:
        """Write back every latest final/original label whose SEG did not reach the PACS; returns how many did."""
        done = 0
        for image_id, heads in self.index.all_heads().items():
            for head in heads:
                status = (head.info.get("dicom_seg") or {}).get("status")
                if head.tag not in WRITE_BACK_TAGS or image_id in skip or status != "pending":
                    continue
                retried = self._write_back(head, None)
                if retried.info["dicom_seg"]["status"] == "stored":
                    done += 1
                else:
                    return done  # the PACS is still failing: try again next time rather than hammer it now
        return done

    def label_head(self, image_id: str, tag: str = FINAL_TAG) -> LabelVersion:
        return self.local.label_head(image_id, tag)

    def label_version(self, image_id: str, tag: str, version: int | None = None) -> LabelVersion:
        return self.local.label_version(image_id, tag, version)

    def label_file(self, label: LabelVersion) -> Path:
        return self.local.label_file(label)

    def label_versions(self, image_id: str, tag: str | None = None) -> list[LabelVersion]:
        return self.local.label_versions(image_id, tag)

    def delete_label(self, image_id: str, tag: str) -> None:
        """Retire the label locally; SEGs already in the PACS stay (DICOMweb has no delete)."""
        self.local.delete_label(image_id, tag)

    def update_label_info(self, image_id: str, tag: str, info: dict[str, Any]) -> dict[str, Any]:
        return self.local.update_label_info(image_id, tag, info)

    # ---------------------------------------------------------------------------------------- listings
    def stats(self) -> DatastoreStats:
        return self.local.stats()

    def dump(self) -> dict[str, Any]:
        return {**self.local.dump(), "name": "dicomweb", "description": f"Series in the PACS at {self.client.url}"}

    def train_pairs(self) -> list[dict[str, str]]:
        return self.local.train_pairs()

    def first_unlabeled(self, last: bool = False, exclude: tuple[str, ...] = ()) -> str | None:
        return self.local.first_unlabeled(last, exclude)

    def unlabeled_ids(self, exclude: tuple[str, ...] = ()) -> list[str]:
        return self.local.unlabeled_ids(exclude)

    def random_unlabeled(self, strategy: str, rng: random.Random, exclude: tuple[str, ...] = ()) -> str | None:
        return self.local.random_unlabeled(strategy, rng, exclude)

    def record_pick(self, strategy: str, image_id: str, client_id: str | None) -> dict[str, Any]:
        return self.local.record_pick(strategy, image_id, client_id)

    def strategy_info(self, image_id: str) -> dict[str, Any]:
        return self.local.strategy_info(image_id)


def cache_dir_for(url: str, data_dir: Path) -> Path:
    """A cache folder per PACS, so pointing the server at another PACS never mixes their labels."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_")[:80]
    return data_dir / "dicomweb" / f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def open_dicomweb_datastore(settings: Any, label_names: Mapping[str, int]) -> DicomWebDatastore:
    """The datastore for `settings.dicomweb_url`. A PACS that is down at start only costs the fresh listing:
    the server starts with the series it last saw, and the periodic rescan picks the PACS up when it is back."""
    secret = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else None
    token = settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None
    client = PacsClient(
        settings.dicomweb_url,
        PacsAuth(username=settings.dicomweb_username, password=secret, token=token),
        timeout_s=settings.dicomweb_timeout_s,
    )
    store = DicomWebDatastore(
        client, settings.dicomweb_cache_dir or cache_dir_for(settings.dicomweb_url, settings.data_dir), label_names
    )
    try:
        store.rescan()
    except AnnotationServerError as exc:
        logger.warning("starting with the last known series list: %s", exc)
    return store
