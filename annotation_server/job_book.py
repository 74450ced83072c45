"""The bookkeeping every one-at-a-time background job service shares (batch inference, uncertainty scoring).

A bounded history of jobs, the one active job and its stop event, copies handed out under one lock (a
request never sees a job half-updated by the worker thread), and waiting for a job to end. The services keep
what differs: what a job is, how it runs, and what finishing it records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, Protocol, TypeVar

from annotation_server.errors import NotFoundError

JobStatus = Literal["SUBMITTED", "RUNNING", "DONE", "ERROR", "STOPPED"]
ACTIVE: tuple[JobStatus, ...] = ("SUBMITTED", "RUNNING")


class Job(Protocol):
    id: str
    status: JobStatus

    def model_copy(self, *, deep: bool = ...) -> Job: ...


J = TypeVar("J", bound=Job)


class JobBook(Generic[J]):
    """Jobs of one kind, newest last, at most `history` kept. `lock` guards every job's fields."""

    def __init__(self, kind: str, history: int = 20) -> None:
        self.kind = kind
        self.history = history
        self.lock = threading.Lock()
        self.closed = False
        self._jobs: list[J] = []
        self._stops: dict[str, threading.Event] = {}

    # Callers hold `lock` for these two.
    def active(self) -> J | None:
        return next((j for j in reversed(self._jobs) if j.status in ACTIVE), None)

    def add(self, job: J) -> threading.Event:
        """Record a new job (dropping the oldest beyond the history); its stop event."""
        self._jobs.append(job)
        del self._jobs[: -self.history]
        stop = threading.Event()
        self._stops = {j.id: self._stops.get(j.id, stop) for j in self._jobs}
        return stop

    def ids(self) -> list[str]:
        """The kept jobs' ids, oldest first (caller holds `lock`)."""
        return [j.id for j in self._jobs]

    def stop_event(self, job_id: str) -> threading.Event:
        return self._stops[job_id]

    def running(self) -> J | None:
        with self.lock:
            job = self.active()
            return job.model_copy(deep=True) if job is not None else None  # type: ignore[return-value]

    def latest(self) -> J | None:
        with self.lock:
            return self._jobs[-1].model_copy(deep=True) if self._jobs else None  # type: ignore[return-value]

    def jobs(self) -> list[J]:
        with self.lock:
            return [j.model_copy(deep=True) for j in self._jobs]  # type: ignore[misc]

    def get(self, job_id: str) -> J:
        with self.lock:
            for job in self._jobs:
                if job.id == job_id:
                    return job.model_copy(deep=True)  # type: ignore[return-value]
        raise NotFoundError(f"{self.kind} job '{job_id}' not found")

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        poll: Callable[[J], None] | None = None,
        interval_s: float = 0.1,
    ) -> J:
        """Block until the job ends or `timeout_s` passes (run_sync, the CLI); `poll` sees each state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if poll is not None:
                poll(job)
            if job.status not in ACTIVE or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(interval_s)

    def stop(self, finish: Callable[[J, JobStatus, str], None], reason: str = "stopped on request") -> J | None:
        """Signal the active job to stop and mark it STOPPED through `finish`; None when none is active."""
        with self.lock:
            job = self.active()
            if job is None:
                return None
            self._stops[job.id].set()
            finish(job, "STOPPED", reason)
            return job.model_copy(deep=True)  # type: ignore[return-value]

    def close(self, finish: Callable[[J, JobStatus, str], None]) -> None:
        """No new jobs from now on; the active one is told to stop."""
        with self.lock:
            self.closed = True
        self.stop(finish, "server shutting down")
