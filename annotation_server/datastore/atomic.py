"""Crash-safe file placement: write to a temporary name in the target folder, fsync, rename.

A reader (or a restart after a crash) therefore sees either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    with contextlib.suppress(OSError):  # not every file system allows fsync on a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def atomic_move(source: Path, target: Path) -> Path:
    """Move `source` (already fully written) to `target` atomically, copying first if on another device."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _fsync_file(source)
    try:
        os.replace(source, target)
    except OSError:
        temp = _temp_path(target)
        shutil.copyfile(source, temp)
        _fsync_file(temp)
        os.replace(temp, target)
        source.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy `source` to `target` so that `target` is never seen half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(target)
    try:
        shutil.copyfile(source, temp)
        _fsync_file(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `target` so that `target` is never seen half-written (readable by all by default)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(target)
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, mode)  # mkstemp creates files 0600
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def atomic_link(source: Path, target: Path) -> Path:
    """Make `target` name the same bytes as `source` (a hard link, or a copy where links are not possible)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.{os.getpid()}.{id(target)}.lnk"
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        return atomic_copy(source, target)
    os.replace(temp, target)
    fsync_dir(target.parent)
    return target


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
