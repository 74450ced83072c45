"""Training jobs: one at a time, each in its own process, tracked in a job folder the server tails.

MONAI Label's task object and status words (SUBMITTED, RUNNING, DONE, ERROR, STOPPED) are kept, so 3D
Slicer's and OHIF's train buttons work. Beyond it: progress (step, epoch, loss, validation Dice, ETA)
comes as JSON lines the child writes; a crash or kill marks the job ERROR with its log's tail; and a
finished job reports the new model version and the promotion gate's decision, after which the server
swaps the served model without a restart (see `on_finished`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from annotation_server.errors import AlreadyRunningError, InvalidRequestError, NotFoundError
from annotation_server.learning.finetune import FineTuneParams, LabeledImage
from annotation_server.learning.train_job import EVENTS, PROGRESS, RESULT, JobSpec

logger = logging.getLogger(__name__)

JobStatus = Literal["SUBMITTED", "RUNNING", "DONE", "ERROR", "STOPPED"]
FINISHED: tuple[JobStatus, ...] = ("DONE", "ERROR", "STOPPED")


class TrainJob(BaseModel):
    """MONAI Label's task object plus our progress and result."""

    id: str
    model: str
    status: JobStatus
    request: dict[str, Any]
    start_ts: str
    end_ts: str | None = None
    details: list[str] = Field(default_factory=list, description="last lines of the job's log")
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    log_file: str
    pid: int | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / EVENTS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # the last line may be mid-write
            continue
    return events


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


class TrainingJobs:
    def __init__(
        self,
        jobs_dir: Path,
        app: str,
        registry_root: Path,
        trainable: Sequence[str],
        on_finished: Callable[[TrainJob], None] = lambda job: None,
        python: str = sys.executable,
    ) -> None:
        self.jobs_dir = jobs_dir
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.app = app
        self.registry_root = registry_root
        self.trainable = list(trainable)
        self.on_finished = on_finished
        self.python = python
        self._lock = threading.Lock()
        self._jobs: dict[str, TrainJob] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping: set[str] = set()

    # ------------------------------------------------------------------------------------------ queries
    def _refresh(self, job: TrainJob) -> TrainJob:
        """Progress and log tail from the job's files; a finished job was read one last time by its watcher."""
        if job.status in FINISHED:  # else /info/ and GET /train/ would re-read every past job's files
            return job
        folder = self.jobs_dir / job.id
        events = read_events(folder)
        progress = [e for e in events if e.get("type") == PROGRESS]
        if progress:
            job.progress = {k: v for k, v in progress[-1].items() if k != "type"}
        job.details = _tail(Path(job.log_file))
        return job

    def running(self) -> TrainJob | None:
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.status not in FINISHED]
        return self._refresh(jobs[-1]) if jobs else None

    def latest(self) -> TrainJob | None:
        with self._lock:
            jobs = list(self._jobs.values())
        return self._refresh(jobs[-1]) if jobs else None

    def all(self) -> list[TrainJob]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [self._refresh(j) for j in jobs]

    def get(self, job_id: str) -> TrainJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no training job '{job_id}' (GET /train/?all=true lists them)")
        return self._refresh(job)

    def stats(self) -> dict[str, dict[str, Any]]:
        """`/info/` train_stats in MONAI Label's shape, per model: its latest job's progress."""
        out: dict[str, dict[str, Any]] = {}
        for job in self.all():
            p = job.progress or {}
            out[job.model] = {
                "job": job.id,
                "status": job.status,
                "epoch": p.get("epoch", 0),
                "total_epochs": p.get("total_epochs", 0),
                "step": p.get("step", 0),
                "total_steps": p.get("total_steps", 0),
                "loss": p.get("loss"),
                "best_metric": p.get("best_metric"),
                "eta_s": p.get("eta_s"),
                "start_ts": job.start_ts,
                **({"total_time": p.get("elapsed_s")} if job.status in FINISHED else {"current_time": _now()}),
                **({"version": job.result["version"]["version"]} if job.result else {}),
            }
        return out

    # ------------------------------------------------------------------------------------------ actions
    def start(self, model: str, request: dict[str, Any], items: Sequence[LabeledImage]) -> TrainJob:
        """Start fine-tuning `model` in a child process; 429 when a job already runs."""
        if model not in self.trainable:
            known = ", ".join(self.trainable) or "none"
            raise NotFoundError(f"model '{model}' has no trainer in this app; trainable models: {known}")
        try:
            params = FineTuneParams.model_validate(request)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidRequestError(f"invalid training parameters: {problems}") from exc
        if len(items) < 2:
            raise InvalidRequestError(
                f"training needs at least 2 images with a 'final' label, the datastore has {len(items)}; "
                "save more labels first"
            )
        with self._lock:
            if any(j.status not in FINISHED for j in self._jobs.values()):
                raise AlreadyRunningError("a training job is already running; wait for it or DELETE /train/")
            job_id = uuid.uuid4().hex[:12]
            folder = self.jobs_dir / job_id
            folder.mkdir(parents=True)
            spec = JobSpec(
                job_id=job_id, app=self.app, model=model, registry_root=self.registry_root, items=items, params=params
            )
            (folder / "spec.json").write_text(spec.model_dump_json(indent=1))
            log_file = folder / "log.txt"
            with log_file.open("wb") as log:
                proc = subprocess.Popen(
                    [self.python, "-m", "annotation_server.learning.train_job", str(folder / "spec.json")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # DELETE /train/ stops the whole process group
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            job = TrainJob(
                id=job_id,
                model=model,
                status="RUNNING",
                request={"model": model, **request},
                start_ts=_now(),
                log_file=str(log_file),
                pid=proc.pid,
            )
            self._jobs[job_id] = job
            self._procs[job_id] = proc
        threading.Thread(target=self._watch, args=(job_id,), name=f"train-{job_id}", daemon=True).start()
        logger.info("training job %s started for %s on %d labels (pid %d)", job_id, model, len(items), proc.pid)
        return job

    def _watch(self, job_id: str) -> None:
        proc = self._procs[job_id]
        code = proc.wait()
        self._refresh(self._jobs[job_id])  # the last progress and log, before the job reads as finished
        folder = self.jobs_dir / job_id
        results = [e for e in read_events(folder) if e.get("type") == RESULT]
        with self._lock:
            finished = self._jobs[job_id].model_copy()
        finished.end_ts = _now()
        if code == 0 and results:  # finished before a stop reached it: its version exists, say so
            finished.status = "DONE"
            finished.result = {k: v for k, v in results[-1].items() if k not in ("type", "ts")}
        elif job_id in self._stopping:
            finished.status = "STOPPED"
        else:
            finished.status = "ERROR"
            tail = _tail(Path(finished.log_file), 5)
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            finished.error = f"training process ended ({how}); log {finished.log_file}: " + " | ".join(tail)
        try:  # e.g. swap in the promoted version: a job reads DONE only once its model serves
            self.on_finished(finished)
        except Exception:
            logger.exception("after training job %s", job_id)
        with self._lock:
            self._jobs[job_id] = finished
            self._procs.pop(job_id, None)
        log = logger.info if finished.status == "DONE" else logger.error
        log("training job %s %s%s", job_id, finished.status, f": {finished.error}" if finished.error else "")

    def stop(self) -> TrainJob | None:
        """Stop the running job (its process group), or None when nothing runs."""
        job = self.running()
        if job is None:
            return None
        with self._lock:
            proc = self._procs.get(job.id)
            self._stopping.add(job.id)
        if proc is not None:
            _kill_group(proc)
        for _ in range(100):
            if self.get(job.id).status in FINISHED:
                break
            time.sleep(0.05)
        return self.get(job.id)

    def close(self) -> None:
        self.stop()


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
