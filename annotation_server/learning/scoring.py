"""Scoring jobs: uncertainty of the serving model on many images, in one background thread.

Scoring is slow next to a click (seconds per image, the whole datastore can take hours), so it never runs
on a request's thread nor in the inference pool: one dedicated thread works through one job at a time with
a low torch thread count, and interactive clicks keep their cores. Results go to the `ScoreCache`, keyed
by the model's name and version, so a hot-swapped model is scored afresh and a restart loses nothing.

Jobs have MONAI Label's task shape (`id`, `status` SUBMITTED/RUNNING/DONE/ERROR/STOPPED, `request`,
`start_ts`, `end_ts`, `details`) plus progress: `done`/`total`, and `errors` per image. A broken image
records its error and the job goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field

from annotation_server.datastore import Datastore
from annotation_server.errors import AlreadyRunningError, ConflictError, InvalidRequestError, NotFoundError
from annotation_server.imaging import Volume, read_volume
from annotation_server.inference.task import InferTask
from annotation_server.job_book import ACTIVE, JobBook, JobStatus
from annotation_server.learning.score_cache import CachedScore, ScoreCache, ScoreKey
from annotation_server.learning.uncertainty import ScoringStopped, UncertaintyScorer, scorable

logger = logging.getLogger(__name__)

_DETAIL_LINES = 20


class ScoringBusyError(AlreadyRunningError):
    """A scoring job is already submitted or running (the API answers 429, as MONAI Label does)."""


class ScoringJob(BaseModel):
    """One scoring job as GET /scoring/ shows it."""

    id: str
    status: JobStatus
    method: str
    model: str
    model_version: str
    request: dict[str, Any] = Field(default_factory=dict)
    total: int
    done: int = 0
    scored: int = Field(0, description="images scored by this job")
    cached: int = Field(0, description="images skipped because a score for this model version exists")
    failed: int = 0
    errors: dict[str, str] = Field(default_factory=dict, description="image id -> why it could not be scored")
    start_ts: str = Field(description="submission time, 'YYYY-mm-dd HH:MM:SS' as in MONAI Label")
    end_ts: str | None = None
    started: float = Field(description="submission time, seconds since the epoch")
    elapsed_s: float = 0.0
    details: list[str] = Field(default_factory=list, description="the job's last log lines")


def _now_ts() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def image_stamp(size: int, mtime: float) -> str:
    """What identifies an image file's content cheaply: a replaced file gets new scores."""
    return f"{size}:{mtime:.6f}"


class ScoringService:
    """Runs scoring jobs in one background thread and answers cached scores for the strategies.

    `tasks` returns the served models (looked up on every use, so a hot-swapped model or version is seen);
    `model` names the one to score with (default: the first bundle-backed segmentation model).
    """

    def __init__(
        self,
        datastore: Datastore,
        tasks: Callable[[], Mapping[str, InferTask]],
        scorers: Mapping[str, UncertaintyScorer],
        cache: ScoreCache,
        model: str | None = None,
        threads: int = 1,
        load_volume: Callable[[str], Volume] | None = None,
        history: int = 20,
    ) -> None:
        self.datastore = datastore
        self.tasks = tasks
        self.scorers = dict(scorers)
        self.cache = cache
        self.model = model
        self.threads = threads
        self._load_volume = load_volume or (lambda image_id: read_volume(datastore.image_path(image_id)))
        self._book: JobBook[ScoringJob] = JobBook("scoring", history)
        self._job_images: dict[str, list[str]] = {}
        self._lock = self._book.lock
        self._queue: queue.Queue[ScoringJob | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ models
    def scoring_task(self, requested: str | None = None) -> InferTask:
        """The model scores are computed with: `requested`, else the configured one, else the first scorable."""
        tasks = self.tasks()
        name = requested or self.model
        if name is not None:
            task = tasks.get(name)
            if task is None:
                available = ", ".join(sorted(n for n, t in tasks.items() if scorable(t))) or "none"
                raise NotFoundError(f"model '{name}' not found; models that can be scored: {available}")
            if not scorable(task):
                raise InvalidRequestError(
                    f"model '{name}' is a {task.type} model; uncertainty scoring needs a bundle-backed "
                    "segmentation model"
                )
            return task
        for task in tasks.values():
            if scorable(task):
                return task
        raise NotFoundError("no model can be scored: uncertainty scoring needs a bundle-backed segmentation model")

    def describe(self) -> dict[str, dict[str, Any]]:
        """/info/ `scoring`: each method with its model and options (empty when no model can be scored)."""
        try:
            task = self.scoring_task()
        except (NotFoundError, InvalidRequestError):
            return {}
        return {
            name: {
                "description": scorer.description,
                "config": {"model": task.name, "model_version": task.version, **scorer.config()},
            }
            for name, scorer in self.scorers.items()
        }

    def _scorer(self, method: str) -> UncertaintyScorer:
        scorer = self.scorers.get(method)
        if scorer is None:
            available = ", ".join(sorted(self.scorers)) or "none"
            raise NotFoundError(f"scoring method '{method}' not found; available methods: {available}")
        return scorer

    # ------------------------------------------------------------------------------------ cached scores
    def _stamps(self, image_ids: Iterable[str] | None = None) -> dict[str, str]:
        wanted = None if image_ids is None else set(image_ids)
        return {
            r.id: image_stamp(r.size, r.mtime) for r in self.datastore.list_images() if wanted is None or r.id in wanted
        }

    def lookup(self, method: str, image_ids: Sequence[str], model: str | None = None) -> dict[str, CachedScore]:
        """Cached results (scores and failures) of `method` for the current version of the scoring model."""
        self._scorer(method)
        task = self.scoring_task(model)
        return self.cache.lookup(ScoreKey(method, task.name, task.version), self._stamps(image_ids))

    # ------------------------------------------------------------------------------------ jobs
    def start(
        self,
        method: str,
        image_ids: Sequence[str] | None = None,
        model: str | None = None,
        force: bool = False,
        trigger: str = "api",
    ) -> ScoringJob:
        """Queue a job for `image_ids` (default: every image without a `final` label); returns at once.

        Images with a cached score for the model's current version are skipped unless `force`; cached
        failures are retried. Raises ScoringBusyError while another job is submitted or running.
        """
        self._scorer(method)
        task = self.scoring_task(model)
        if image_ids is None:
            ids = self.datastore.unlabeled_ids()
        else:
            ids = list(dict.fromkeys(image_ids))
            known = self._stamps(ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise NotFoundError(f"images not in the datastore: {', '.join(unknown[:10])}")
        with self._lock:
            if self._book.closed:
                raise ConflictError("the server is shutting down; scoring is closed")
            running = self._book.active()
            if running is not None:
                raise ScoringBusyError(
                    f"Scoring Task is Already Running: {running.method} on {running.done}/{running.total} images "
                    "done; GET /scoring/ shows its progress, DELETE /scoring/ stops it"
                )
            job = ScoringJob(
                id=str(uuid.uuid4()),
                status="SUBMITTED",
                method=method,
                model=task.name,
                model_version=task.version,
                request={
                    "method": method,
                    "model": task.name,
                    "force": force,
                    "trigger": trigger,
                    "images": "unlabeled" if image_ids is None else ids if len(ids) <= 50 else f"{len(ids)} images",
                },
                total=len(ids),
                start_ts=_now_ts(),
                started=time.time(),
            )
            self._book.add(job)
            self._job_images = {i: self._job_images.get(i, ids) for i in self._book.ids()}
            self._ensure_thread()
        self._queue.put(job)
        logger.info("scoring job %s queued: %s with %s on %d images (%s)", job.id, method, task.name, len(ids), trigger)
        return job.model_copy(deep=True)

    def ensure_scored(self, method: str, image_ids: Sequence[str], model: str | None = None) -> ScoringJob | None:
        """Start a background job for those of `image_ids` never tried with the current model; never waits.

        Returns the job, or None when every image has a result or a job is already running (the next call
        after it ends picks up what is left).
        """
        if not image_ids:
            return None
        with self._lock:
            if self._book.active() is not None or self._book.closed:
                return None
        tried = self.lookup(method, image_ids, model)
        missing = [i for i in image_ids if i not in tried]
        if not missing:
            return None
        try:
            return self.start(method, missing, model=model, trigger=f"activelearning/{method}")
        except (ScoringBusyError, NotFoundError):  # a job started, or an image was removed, since the check
            return None

    def running(self) -> ScoringJob | None:
        return self._book.running()

    def latest(self) -> ScoringJob | None:
        return self._book.latest()

    def jobs(self) -> list[ScoringJob]:
        return self._book.jobs()

    def get(self, job_id: str) -> ScoringJob:
        return self._book.get(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> ScoringJob:
        """Block until the job leaves SUBMITTED/RUNNING (run_sync, scripts, tests)."""
        return self._book.wait(job_id, timeout_s, interval_s=0.05)

    def stop(self) -> ScoringJob | None:
        """Stop the submitted or running job (it ends after the forward pass in progress); None if none."""
        return self._book.stop(self._finish)

    def close(self) -> None:
        """Stop any job and end the thread (waits a few seconds for the pass in progress)."""
        self._book.close(self._finish)
        with self._lock:
            thread = self._thread
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout=10)
        self.cache.close()

    # ------------------------------------------------------------------------------------ the thread
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="scoring", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        _limit_torch_threads(self.threads)
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # a bug in one job must not end the thread
                logger.exception("scoring job %s failed", job.id)
                with self._lock:
                    self._finish(job, "ERROR", f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _note(job: ScoringJob, line: str) -> None:
        job.details.append(f"{_now_ts()} {line}")
        del job.details[:-_DETAIL_LINES]

    def _finish(self, job: ScoringJob, status: JobStatus, line: str) -> None:
        if job.status not in ACTIVE:
            return
        job.status = status
        job.end_ts = _now_ts()
        job.elapsed_s = round(time.time() - job.started, 3)
        self._note(job, line)

    def _run(self, job: ScoringJob) -> None:
        with self._lock:
            if job.status != "SUBMITTED":  # stopped while queued
                return
            stop = self._book.stop_event(job.id)
            image_ids = self._job_images[job.id]
            job.status = "RUNNING"
            self._note(job, f"started: {job.method} with {job.model} v{job.model_version} on {job.total} images")
        scorer = self._scorer(job.method)
        force = bool(job.request.get("force"))
        for image_id in image_ids:
            if stop.is_set():
                return
            task = self.scoring_task(job.model)  # per image: follows a version swap mid-job
            key = ScoreKey(job.method, task.name, task.version)
            stamp = self._stamps([image_id]).get(image_id)
            if stamp is None:
                self._record_failure(job, image_id, "image is no longer in the datastore")
                continue
            cached = self.cache.lookup(key, {image_id: stamp}).get(image_id)
            if cached is not None and cached.score is not None and not force:
                with self._lock:
                    job.cached += 1
                    job.done += 1
                continue
            try:
                result = scorer.score(task, self._load_volume(image_id), stop.is_set)
            except ScoringStopped:
                return
            except Exception as exc:  # a broken image is recorded; the job goes on
                message = f"{type(exc).__name__}: {exc}"
                logger.warning("scoring %s with %s failed: %s", image_id, job.method, message)
                self.cache.put(image_id, key, stamp, None, error=message)
                self._record_failure(job, image_id, message)
                continue
            self.cache.put(image_id, key, stamp, result.value, details=result.details)
            with self._lock:
                job.scored += 1
                job.done += 1
                self._note(job, f"{image_id}: {result.value:.4f}")
        with self._lock:
            summary = f"{job.scored} scored, {job.cached} cached, {job.failed} failed"
            self._finish(job, "DONE", f"done: {summary}")
        logger.info("scoring job %s done: %s", job.id, summary)

    def _record_failure(self, job: ScoringJob, image_id: str, message: str) -> None:
        with self._lock:
            job.failed += 1
            job.done += 1
            job.errors[image_id] = message
            self._note(job, f"{image_id}: FAILED {message}")


def _limit_torch_threads(threads: int) -> None:
    """Give the calling thread `threads` torch intra-op threads, and every other thread its default.

    OpenMP and MKL keep the count per thread, but `torch.set_num_threads` also sets the count that threads
    started later take on their first torch op: inference and request threads created after scoring began
    would run clicks on `threads` cores. So the default is put back from a short-lived helper thread.
    """
    default = torch.get_num_threads()  # also fixes this thread's own count before it is changed
    torch.set_num_threads(threads)
    restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="torch-threads")
    restore.start()
    restore.join()
