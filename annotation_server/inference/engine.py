"""Runs InferTasks off the event loop and turns their masks into the files clients expect.

Inference runs in a small thread pool with a bounded number of waiting requests: past the bound the
client gets 503 with Retry-After instead of an unbounded pile-up, and /info/ or datastore requests
never wait behind a model. Volumes come from the shared VolumeCache, so repeated requests on one image
skip decoding it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from annotation_server.datastore import Datastore, LabelSource
from annotation_server.errors import BusyError, InvalidRequestError, NotFoundError, UnsupportedFormatError
from annotation_server.imaging import Volume, read_volume, write_volume
from annotation_server.imaging.formats import LABEL_EXTENSIONS, split_extension
from annotation_server.inference.cache import VolumeCache
from annotation_server.inference.click_memory import ClickMemory
from annotation_server.inference.labels import client_label_names, to_client_values
from annotation_server.inference.params import InferParams
from annotation_server.inference.task import InferTask

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ImageSource:
    """Where the volume to infer on comes from: a datastore image, a session image or an uploaded file."""

    path: Path
    default_extension: str
    image_id: str | None = None  # set only for datastore images: results may be saved as their labels
    cacheable: bool = True


@dataclass
class InferOutcome:
    params: dict[str, Any]
    result_path: Path


class InferenceService:
    """The model registry for one app plus the executor that runs them."""

    def __init__(
        self,
        tasks: Mapping[str, InferTask],
        cache: VolumeCache,
        datastore: Datastore,
        work_dir: Path,
        workers: int = 1,
        max_pending: int = 16,
    ) -> None:
        self.tasks = dict(tasks)
        self.cache = cache
        self.datastore = datastore
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.click_memory = ClickMemory()  # /infer's clicks: each new one corrects the answer to the ones before
        # Called with (model, kind, seconds) after each model run; the server points it at its metrics.
        self.observer: Callable[[str, str, float], None] = lambda model, kind, seconds: None
        # Called with (image id, mask, model, model version) after a model ran on a datastore image; the server
        # points it at the pre-annotation store, so a later final label can be compared with the model's output.
        self.result_observer: Callable[[str, np.ndarray, str, str | None], None] = lambda *result: None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def call(self, work: Callable[[], T]) -> T:
        """Run `work` on the inference thread and wait for it: model loading, warm-up, hot swaps, preparing an
        image for clicks. Every torch call of the server happens on that one thread.

        Why: on a small CPU, a torch operation on any second thread gives the process a second OpenMP team,
        and GNU OpenMP then stops spinning between parallel regions, for good. The click model's forward
        pass went from 20 to 28 ms here after one stray tensor sum elsewhere. Not bounded by `max_pending`:
        callers are the server itself, not clients.
        """
        return self._executor.submit(work).result()

    @property
    def pending(self) -> int:
        return self._pending

    def task(self, name: str) -> InferTask:
        task = self.tasks.get(name)
        if task is None:
            available = ", ".join(sorted(self.tasks)) or "none"
            raise NotFoundError(f"model '{name}' not found; available models: {available}")
        return task

    async def submit(self, work: Callable[[], T]) -> T:
        """Run `work` in the inference pool; 503 (BusyError) when `max_pending` requests already wait or run."""
        with self._pending_lock:
            if self._pending >= self.max_pending:
                raise BusyError(f"{self._pending} inference requests are already waiting; retry shortly", 1)
            self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            with self._pending_lock:
                self._pending -= 1

    async def infer(self, model: str, source: ImageSource, params: InferParams) -> InferOutcome:
        task = self.task(model)
        extension = self._result_extension(params, source)
        return await self.submit(lambda: self._run(task, source, params, extension))

    @staticmethod
    def _result_extension(params: InferParams, source: ImageSource) -> str:
        extension = params.result_extension or source.default_extension or ".nii.gz"
        try:
            split_extension(f"result{extension}", LABEL_EXTENSIONS)
        except UnsupportedFormatError as exc:
            raise InvalidRequestError(
                f"result_extension '{extension}' is not supported; use one of {', '.join(LABEL_EXTENSIONS)}"
            ) from exc
        return extension

    def _load(self, source: ImageSource) -> Volume:
        return self.cache.get(source.path) if source.cacheable else read_volume(source.path)

    def _run(self, task: InferTask, source: ImageSource, params: InferParams, extension: str) -> InferOutcome:
        started = time.perf_counter()
        volume = self._load(source)
        loaded = time.perf_counter()
        result = task.infer(volume, params)
        if task.is_interactive and source.cacheable and params.foreground and params.click_scope == "local":
            scope = (str(source.path), task.name, task.version, params.label, params.client_id)
            result.mask = self.click_memory.correct(
                scope, params.foreground, params.background, result.mask, volume.geometry.spacing
            )
        inferred = time.perf_counter()
        if tuple(result.mask.shape) != volume.geometry.shape:
            raise RuntimeError(f"model {task.name} returned shape {result.mask.shape} for {volume.geometry.shape}")
        if source.image_id is not None:
            self.result_observer(source.image_id, result.mask, task.name, task.version)
        values = to_client_values(result.mask, result.label_names, params.restore_label_idx)
        names = client_label_names(result.label_names, params.restore_label_idx)
        dtype = np.dtype(params.result_dtype or ("uint8" if values.max(initial=0) <= 255 else "uint16"))
        posted = time.perf_counter()
        name = self.work_dir / f"{task.name}-{uuid.uuid4().hex[:12]}{extension}"
        result_path = write_volume(
            values.astype(dtype),
            volume.geometry,
            name,
            reference=volume,
            compress=params.result_compress or extension.endswith(".gz"),
            label_names=names,
        )
        written = time.perf_counter()
        saved: dict[str, Any] = {}
        if params.save_label and source.image_id is not None:
            label = self.datastore.save_label_array(
                source.image_id,
                result.mask.astype(np.uint16 if result.mask.max(initial=0) > 255 else np.uint8),
                tag=params.label_tag,
                author=params.client_id or "model",
                reference=volume,
                info={"model": task.name, "params": {"label_names": dict(result.label_names)}},
                source=LabelSource(model=task.name, model_version=task.version),
            )
            saved = {"saved_label": {"tag": label.tag, "version": label.version}}
        finished = time.perf_counter()
        latencies = {
            "pre": round(loaded - started, 4),
            "infer": round(inferred - loaded, 4),
            "invert": 0.0,
            "post": round(posted - inferred, 4),
            "write": round(written - posted, 4),
            "total": round(finished - started, 4),
            "transform": None,
        }
        logger.info("infer %s on %s: %.3fs", task.name, source.image_id or source.path.name, finished - started)
        self.observer(task.name, "infer", inferred - loaded)
        payload = {
            **result.extra,
            **saved,
            "label_names": names,
            "latencies": latencies,
            "model": task.name,
            "model_version": task.version,
        }
        return InferOutcome(params=payload, result_path=result_path)
