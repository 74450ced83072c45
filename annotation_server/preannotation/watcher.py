"""The PACS watcher: series new in the PACS get the app's automatic model once, written back as a SEG.

Every `interval_s` it lists the PACS's series with QIDO-RS (filtered by Modality when the rules name one),
compares them with its SQLite state and records those it has never seen. A PACS receives a series instance
by instance, so a new series is queued only once its instance count has stopped changing for `settle_s`.
On the very first run it records what is already there as the baseline instead (it is for arrivals;
`POST /batch/infer` covers the archive).
A QIDO date filter would miss a new series added to an old study, and Orthanc's change feed is Orthanc's
alone, so the watcher compares UIDs, which works with any DICOMweb PACS.

Queued series are pre-annotated by up to `concurrency` worker threads (fetch, model on the inference
thread, label version, SEG), each claimed in SQLite first: a series is done at most once, across restarts
too. A failure is retried after `retry_s`, doubled per attempt, up to `max_attempts`, then reported as
`failed` (GET /preannotation/, the log, `/metrics`). Every series gets one log line saying what happened.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from annotation_server.dicomweb.datastore import NON_IMAGE_MODALITIES, DicomWebDatastore, series_info
from annotation_server.errors import AnnotationServerError, NotFoundError
from annotation_server.inference.batch import preannotate
from annotation_server.inference.engine import InferenceService
from annotation_server.preannotation.rules import PreannotationRules
from annotation_server.preannotation.state import SeriesState, WatchState

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 3600.0


class PacsWatcher:
    """Polls one PACS for new series and pre-annotates those the app's rules accept."""

    def __init__(
        self,
        datastore: DicomWebDatastore,
        inference: InferenceService,
        rules: PreannotationRules,
        state: WatchState,
        interval_s: float = 30.0,
        concurrency: int = 1,
        max_attempts: int = 5,
        retry_s: float = 60.0,
        settle_s: float = 60.0,
    ) -> None:
        self.datastore = datastore
        self.inference = inference
        self.rules = rules
        self.state = state
        self.interval_s = interval_s
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.retry_s = retry_s
        self.settle_s = settle_s
        self.model = self._choose_model()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="preannotate")
        self._running: dict[str, Future[None]] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_poll_ts: float | None = None
        self.last_error: str | None = None

    def _choose_model(self) -> str:
        tasks = self.inference.tasks
        if self.rules.model is not None:
            self.inference.task(self.rules.model)  # NotFoundError naming the models served
            return self.rules.model
        for name, task in tasks.items():
            if task.type == "segmentation":
                return name
        raise NotFoundError("the PACS watcher needs an automatic (segmentation) model; this app serves none")

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        interrupted = self.state.requeue_interrupted()
        if interrupted:
            logger.info("pre-annotation: %d series interrupted at the last stop are queued again", interrupted)
        self._thread = threading.Thread(target=self._loop, name="pacs-watcher", daemon=True)
        self._thread.start()
        logger.info(
            "pre-annotation: watching %s every %.0fs with %s (rules: %s)",
            self.datastore.client.url,
            self.interval_s,
            self.model,
            self.rules,
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.state.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    # ------------------------------------------------------------------------------------------ one round
    def poll_once(self) -> None:
        """Find new series, then hand due ones to the workers. Never raises: a down PACS costs one round."""
        try:
            self._discover()
            self.last_error = None
        except AnnotationServerError as exc:
            self.last_error = str(exc)
            logger.warning("pre-annotation: polling the PACS failed (next try in %.0fs): %s", self.interval_s, exc)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("pre-annotation: polling failed")
        self.last_poll_ts = time.time()
        self._dispatch()

    def _discover(self) -> None:
        filters: dict[str, Any] = {}
        if len(self.rules.modalities) == 1:
            filters["Modality"] = self.rules.modalities[0]
        found = [series_info(item) for item in self.datastore.client.search_series(filters)]
        found = [s for s in found if s.get("SeriesInstanceUID")]
        if not self.state.baseline_taken():
            count = self.state.take_baseline(
                (s["SeriesInstanceUID"], str(s.get("StudyInstanceUID", ""))) for s in found
            )
            logger.info("pre-annotation: first run, %d series already in the PACS are left as they are", count)
            return
        known = self.state.known()
        for info in found:
            uid = info["SeriesInstanceUID"]
            instances = int(info.get("NumberOfSeriesRelatedInstances") or -1)
            if uid in known:
                self.state.observe(uid, instances)
                continue
            study = str(info.get("StudyInstanceUID", ""))
            reason = self._rejects(info)
            if self.state.add(uid, study, "skipped" if reason else "arriving", reason, instances):
                if reason:
                    logger.info("pre-annotation: new series %s skipped: %s", uid, reason)
                else:
                    logger.info(
                        "pre-annotation: new series %s (%s, %d instances so far)", uid, info.get("Modality"), instances
                    )
        for uid in self.state.settle(self.settle_s):
            logger.info(
                "pre-annotation: series %s complete (no new instance for %gs), queued for %s",
                uid,
                self.settle_s,
                self.model,
            )

    def _rejects(self, info: dict[str, Any]) -> str | None:
        if str(info.get("Modality", "")) in NON_IMAGE_MODALITIES:
            return f"a {info.get('Modality')} series is not an image"
        return self.rules.rejects(info)

    def _dispatch(self) -> None:
        with self._guard:
            self._running = {uid: f for uid, f in self._running.items() if not f.done()}
            free = self.concurrency - len(self._running)
            for series in self.state.claim_due(free):
                self._running[series.uid] = self._pool.submit(self._process, series)

    # ------------------------------------------------------------------------------------------ one series
    def _process(self, series: SeriesState) -> None:
        started = time.perf_counter()
        attempt = series.attempts  # counted when the series was claimed
        try:
            label = preannotate(
                self.inference,
                self.datastore,
                self.model,
                series.uid,
                author="pacs-watcher",
                info={"trigger": "pacs-watcher", "attempt": attempt},
            )
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_attempts:
                self.state.mark_failed(series.uid, message, None)
                logger.error(
                    "pre-annotation: series %s FAILED after %d attempts, giving up: %s", series.uid, attempt, message
                )
            else:
                wait_s = min(self.retry_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                self.state.mark_failed(series.uid, message, time.time() + wait_s)
                logger.warning(
                    "pre-annotation: series %s failed (attempt %d of %d), retry in %.0fs: %s",
                    series.uid,
                    attempt,
                    self.max_attempts,
                    wait_s,
                    message,
                )
            return
        seg = (label.info.get("dicom_seg") or {}).get("status")
        self.state.mark_done(series.uid, label.version, seg)
        logger.info(
            "pre-annotation: series %s done with %s v%s in %.1fs: original v%d, SEG %s",
            series.uid,
            self.model,
            label.source.model_version,
            time.perf_counter() - started,
            label.version,
            seg or "n/a",
        )

    # ------------------------------------------------------------------------------------------ reports
    def report(self, limit: int = 50, status: str | None = None) -> dict[str, Any]:
        return {
            "enabled": True,
            "pacs": self.datastore.client.url,
            "model": self.model,
            "rules": {
                "modalities": list(self.rules.modalities),
                "body_parts": list(self.rules.body_parts),
                "series_description": self.rules.series_description,
            },
            "interval_s": self.interval_s,
            "concurrency": self.concurrency,
            "max_attempts": self.max_attempts,
            "settle_s": self.settle_s,
            "last_poll_ts": self.last_poll_ts,
            "last_error": self.last_error,
            **self.state.as_dict(),
            "series": [s.model_dump() for s in self.state.recent(limit, [status] if status else None)],
        }
