"""Batch inference in MONAI Label's shape: run one model over many datastore images in the background.

Each image's result is saved as a new version of MONAI Label's `original` tag (the model's own output),
with the model and its version as provenance; on a DICOMweb datastore the version is also written to the
PACS as a DICOM SEG (AUTOMATIC algorithm type). `preannotate()` is the one place that does this for a
single image: batch jobs and the PACS watcher both call it.

Jobs run one at a time on a dedicated thread; each forward pass is handed to the inference thread (where
every torch call of the server runs), one image at a time, so interactive clicks interleave with a batch
instead of waiting behind it. Fetching a series from the PACS and writing the SEG happen on the batch
thread, never on the inference thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from annotation_server.datastore import Datastore, LabelSource
from annotation_server.datastore.records import LabelVersion
from annotation_server.errors import AlreadyRunningError, ConflictError, InvalidRequestError
from annotation_server.inference.engine import InferenceService
from annotation_server.inference.params import InferParams
from annotation_server.job_book import ACTIVE, JobBook, JobStatus

logger = logging.getLogger(__name__)

ORIGINAL_TAG = "original"
ImageStatus = Literal["pending", "running", "done", "failed", "skipped"]
IMAGE_SETS = ("all", "labeled", "unlabeled")
_DETAIL_LINES = 20


class BatchBusyError(AlreadyRunningError):
    """A batch inference job is already submitted or running (429, as MONAI Label answers)."""


class ImageProgress(BaseModel):
    status: ImageStatus = "pending"
    label_version: int | None = None
    seconds: float | None = None
    dicom_seg: str | None = Field(None, description="PACS write-back state on a DICOMweb datastore")
    error: str | None = None


class BatchJob(BaseModel):
    """One batch inference job as GET /batch/infer shows it (MONAI Label's task fields plus progress)."""

    id: str
    status: JobStatus
    model: str
    model_version: str
    request: dict[str, Any] = Field(default_factory=dict)
    label_tag: str = ORIGINAL_TAG
    total: int
    done: int = 0
    failed: int = 0
    images: dict[str, ImageProgress] = Field(default_factory=dict, description="image id -> its progress")
    errors: dict[str, str] = Field(default_factory=dict, description="image id -> why it failed")
    start_ts: str
    end_ts: str | None = None
    started: float
    elapsed_s: float = 0.0
    series_per_minute: float | None = None
    details: list[str] = Field(default_factory=list, description="the job's last log lines")


def _now_ts() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def preannotate(
    inference: InferenceService,
    datastore: Datastore,
    model: str,
    image_id: str,
    tag: str = ORIGINAL_TAG,
    author: str = "batch",
    info: dict[str, Any] | None = None,
) -> LabelVersion:
    """Run `model` on a datastore image and save its output as a new `tag` version (PACS SEG where there is one).

    The series is fetched (WADO) on the caller's thread; only the forward pass runs on the inference thread.
    The model output is also recorded as the image's pre-annotation, so the effort of the final label that an
    annotator later saves is measured against it.
    """
    task = inference.task(model)
    if task.type not in ("segmentation", "vista3d"):
        raise InvalidRequestError(
            f"model '{model}' is a {task.type} model, which needs clicks; batch inference runs automatic "
            "(segmentation) models"
        )
    path: Path = datastore.image_path(image_id)
    version = task.version

    def work() -> tuple[Any, np.ndarray]:
        volume = inference.cache.get(path)
        result = task.infer(volume, InferParams())
        return volume, result.mask

    started = time.perf_counter()
    volume, mask = inference.call(work)
    inference.observer(task.name, "batch", time.perf_counter() - started)
    if tuple(mask.shape) != volume.geometry.shape:
        raise RuntimeError(f"model {task.name} returned shape {mask.shape} for {volume.geometry.shape}")
    inference.result_observer(image_id, mask, task.name, version)
    return datastore.save_label_array(
        image_id,
        mask.astype(np.uint16 if mask.max(initial=0) > 255 else np.uint8),
        tag=tag,
        author=author,
        info={"model": task.name, "model_version": version, **(info or {})},
        source=LabelSource(model=task.name, model_version=version),
        reference=volume,
    )


class BatchInferService:
    """One background thread running batch inference jobs, one job at a time."""

    def __init__(self, datastore: Datastore, inference: InferenceService, history: int = 20) -> None:
        self.datastore = datastore
        self.inference = inference
        self._book: JobBook[BatchJob] = JobBook("batch inference", history)
        self._lock = self._book.lock
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ images
    def resolve_images(self, images: str | Sequence[str]) -> list[str]:
        """`all`, `labeled` (has a final label), `unlabeled`, or explicit ids (each must exist)."""
        if isinstance(images, str):
            if images not in IMAGE_SETS:
                raise InvalidRequestError(f"images must be one of {', '.join(IMAGE_SETS)} or a list of image ids")
            every = sorted(r.id for r in self.datastore.list_images())
            if images == "all":
                return every
            unlabeled = set(self.datastore.unlabeled_ids())
            return [i for i in every if (i in unlabeled) == (images == "unlabeled")]
        ids = list(dict.fromkeys(str(i) for i in images))
        if not ids:
            raise InvalidRequestError("the image list is empty: give image ids, or images=all|unlabeled|labeled")
        known = {r.id for r in self.datastore.list_images()}
        unknown = [i for i in ids if i not in known]
        for image_id in unknown:
            self.datastore.get_image(image_id)  # a DICOMweb datastore looks a new series up; else NotFoundError
        return ids

    # ------------------------------------------------------------------------------------------ jobs
    def start(
        self,
        model: str,
        images: str | Sequence[str] = "all",
        label_tag: str = ORIGINAL_TAG,
        request: dict[str, Any] | None = None,
    ) -> BatchJob:
        task = self.inference.task(model)
        if task.type not in ("segmentation", "vista3d"):
            raise InvalidRequestError(
                f"model '{model}' is a {task.type} model; batch inference runs automatic segmentation models "
                f"({', '.join(n for n, t in self.inference.tasks.items() if t.type == 'segmentation') or 'none'})"
            )
        ids = self.resolve_images(images)
        with self._lock:
            if self._book.closed:
                raise ConflictError("the server is shutting down; batch inference is closed")
            running = self._book.active()
            if running is not None:
                raise BatchBusyError(
                    f"Batch Infer Task is Already Running: {running.model} on {running.done}/{running.total} images "
                    "done; GET /batch/infer shows its progress, DELETE /batch/infer stops it"
                )
            job = BatchJob(
                id=str(uuid.uuid4()),
                status="SUBMITTED",
                model=task.name,
                model_version=task.version,
                label_tag=label_tag,
                request={**(request or {}), "model": task.name, "images": images if isinstance(images, str) else ids},
                total=len(ids),
                images={i: ImageProgress() for i in ids},
                start_ts=_now_ts(),
                started=time.time(),
            )
            stop = self._book.add(job)
            self._thread = threading.Thread(target=self._run, args=(job, ids, stop), name="batch-infer", daemon=True)
            self._thread.start()
        logger.info("batch inference %s queued: %s on %d images", job.id, task.name, len(ids))
        return job.model_copy(deep=True)

    def running(self) -> BatchJob | None:
        return self._book.running()

    def latest(self) -> BatchJob | None:
        return self._book.latest()

    def jobs(self) -> list[BatchJob]:
        return self._book.jobs()

    def get(self, job_id: str) -> BatchJob:
        return self._book.get(job_id)

    def wait(
        self, job_id: str, timeout_s: float | None = None, poll: Callable[[BatchJob], None] | None = None
    ) -> BatchJob:
        """Block until the job ends (run_sync, the CLI); `poll` sees each intermediate state."""
        return self._book.wait(job_id, timeout_s, poll)

    def stop(self) -> BatchJob | None:
        """Stop the running job after the image in progress; None (JSON null) when nothing runs."""
        return self._book.stop(self._finish)

    def close(self) -> None:
        self._book.close(self._finish)
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    # ------------------------------------------------------------------------------------------ the thread
    @staticmethod
    def _note(job: BatchJob, line: str) -> None:
        job.details.append(f"{_now_ts()} {line}")
        del job.details[:-_DETAIL_LINES]

    def _finish(self, job: BatchJob, status: JobStatus, line: str) -> None:
        if job.status not in ACTIVE:
            return
        job.status = status
        job.end_ts = _now_ts()
        job.elapsed_s = round(time.time() - job.started, 3)
        finished = job.done - job.failed
        job.series_per_minute = round(60 * finished / job.elapsed_s, 2) if job.elapsed_s > 0 else None
        self._note(job, line)

    def _run(self, job: BatchJob, ids: list[str], stop: threading.Event) -> None:
        with self._lock:
            if job.status != "SUBMITTED":
                return
            job.status = "RUNNING"
            self._note(job, f"started: {job.model} v{job.model_version} on {job.total} images")
        try:
            for image_id in ids:
                if stop.is_set():
                    return
                self._one(job, image_id)
        except Exception as exc:  # a bug must end the job visibly, not leave it RUNNING forever
            logger.exception("batch inference %s failed", job.id)
            with self._lock:
                self._finish(job, "ERROR", f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._finish(job, "DONE", f"done: {job.done - job.failed} labeled, {job.failed} failed")
        logger.info("batch inference %s done: %d of %d images, %d failed", job.id, job.done, job.total, job.failed)

    def _one(self, job: BatchJob, image_id: str) -> None:
        with self._lock:
            job.images[image_id].status = "running"
        started = time.perf_counter()
        try:
            label = preannotate(
                self.inference,
                self.datastore,
                job.model,
                image_id,
                tag=job.label_tag,
                author="batch",
                info={"batch_job": job.id},
            )
        except Exception as exc:  # one broken image is recorded; the job goes on
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("batch inference of %s on %s failed: %s", job.model, image_id, message)
            with self._lock:
                job.images[image_id] = ImageProgress(
                    status="failed", seconds=round(time.perf_counter() - started, 3), error=message
                )
                job.errors[image_id] = message
                job.failed += 1
                job.done += 1
                self._note(job, f"{image_id}: FAILED {message}")
            return
        seconds = round(time.perf_counter() - started, 3)
        seg = (label.info.get("dicom_seg") or {}).get("status")
        with self._lock:
            job.images[image_id] = ImageProgress(
                status="done", label_version=label.version, seconds=seconds, dicom_seg=seg
            )
            job.done += 1
            self._note(job, f"{image_id}: {job.label_tag} v{label.version} in {seconds:.2f}s")
        logger.info(
            "batch %s: %s on %s -> %s v%d (%.2fs)%s",
            job.id[:8],
            job.model,
            image_id,
            job.label_tag,
            label.version,
            seconds,
            f", SEG {seg}" if seg else "",
        )
