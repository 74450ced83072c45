"""The latest model output per datastore image, kept so a later final label can be compared with it.

`record()` is what the inference engine (and an interactive save) calls: it only keeps a reference and
hands the write to one background thread, so /infer/ answers do not wait for compression or fsync. The
file holds the mask cropped to its foreground box (`np.savez_compressed`, written atomically), which is
small even for a whole-body CT. Until a write lands, `get()` answers from memory, so a label saved right
after the inference still finds its pre-annotation.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotation_server.datastore.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

PREANNOTATIONS_DIRNAME = "preannotations"


@dataclass(frozen=True)
class Preannotation:
    image_id: str
    mask: np.ndarray
    model: str
    model_version: str | None
    created_ts: float


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hits = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _encode(item: Preannotation) -> bytes:
    """The mask cropped to its foreground box, plus what is needed to put it back on the full grid."""
    box = _foreground_box(item.mask)
    if box is None:
        offset, crop = np.zeros(item.mask.ndim, np.int64), np.zeros((0,) * item.mask.ndim, item.mask.dtype)
    else:
        offset, crop = np.array([s.start for s in box], np.int64), item.mask[box]
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        shape=np.array(item.mask.shape, np.int64),
        offset=offset,
        crop=crop,
        model=np.array(item.model),
        model_version=np.array(item.model_version or ""),
        created_ts=np.array(item.created_ts),
    )
    return buffer.getvalue()


def _decode(image_id: str, path: Path) -> Preannotation:
    with np.load(path, allow_pickle=False) as data:
        crop = data["crop"]
        mask = np.zeros(tuple(int(n) for n in data["shape"]), dtype=crop.dtype)
        if crop.size:
            mask[tuple(slice(int(o), int(o) + n) for o, n in zip(data["offset"], crop.shape, strict=True))] = crop
        version = str(data["model_version"])
        return Preannotation(
            image_id=image_id,
            mask=mask,
            model=str(data["model"]),
            model_version=version or None,
            created_ts=float(data["created_ts"]),
        )


class PreannotationStore:
    """`<state_dir>/preannotations/<image_id>.npz`, newest model output wins."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._pending: dict[str, Preannotation] = {}
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preannotations")

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.npz"

    def record(self, image_id: str, mask: np.ndarray, model: str, model_version: str | None) -> None:
        """Remember `mask` as the image's pre-annotation. The caller hands the array over: do not edit it after."""
        item = Preannotation(image_id, mask, model, model_version, time.time())
        with self._lock:
            self._pending[image_id] = item
        self._writer.submit(self._write, item)

    def _write(self, item: Preannotation) -> None:
        try:
            atomic_write_bytes(self.path(item.image_id), _encode(item))
        except Exception:  # losing a pre-annotation only loses an effort measure; never the server
            logger.exception("could not store the pre-annotation of %s", item.image_id)
        finally:
            with self._lock:
                if self._pending.get(item.image_id) is item:
                    del self._pending[item.image_id]

    def get(self, image_id: str) -> Preannotation | None:
        with self._lock:
            pending = self._pending.get(image_id)
        if pending is not None:
            return pending
        path = self.path(image_id)
        if not path.is_file():
            return None
        try:
            return _decode(image_id, path)
        except Exception as exc:  # a damaged file means "no pre-annotation", not a failed save
            logger.warning("ignoring unreadable pre-annotation %s: %s", path, exc)
            return None

    def flush(self) -> None:
        """Wait until every recorded pre-annotation is on disk."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
