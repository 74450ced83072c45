"""Logging: a rotating file per server (what GET /logs/ serves) plus the console for the CLI."""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# uvicorn's own loggers do not propagate to the root logger, so they get the handler directly.
_LOGGERS = ("", "uvicorn", "uvicorn.access")


def attach_file_log(path: Path, level: str = "info") -> RotatingFileHandler:
    """Start writing the server log to `path` (10 MB x 3 files); returns the handler to detach later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=10 << 20, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(level.upper())
    for name in _LOGGERS:
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("annotation_server").setLevel(level.upper())
    return handler


def detach_file_log(handler: logging.Handler) -> None:
    for name in _LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()
