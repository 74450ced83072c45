"""GET /train/ and GET /scoring/ answer alike (MONAI Label's async-task pattern): one implementation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from annotation_server.errors import NotFoundError

T = TypeVar("T")


def task_status(
    running: Callable[[], T | None],
    latest: Callable[[], T | None],
    every: Callable[[], Sequence[T]],
    all: bool,
    check_if_running: bool,
    noun: str,
) -> Any:
    """The running job, every job, or the latest one; 404 (which Slicer and OHIF read as 'no job') otherwise."""
    if check_if_running:
        job = running()
        if job is None:
            raise NotFoundError(f"No {noun} Tasks are currently Running")
        return job
    if all:
        return every()
    job = latest()
    if job is None:
        raise NotFoundError(f"No {noun} Tasks Found")
    return job
