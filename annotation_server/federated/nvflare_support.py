"""NVIDIA FLARE is an optional extra: the server runs without it, federation commands say how to get it."""

from __future__ import annotations

import importlib.util

from annotation_server.errors import AnnotationServerError

INSTALL_HINT = "pip install 'annotation-server[fl]'"


class FederationUnavailableError(AnnotationServerError):
    """NVFlare is not installed in this environment."""


class FederationFailedError(AnnotationServerError):
    """An NVFlare run ended without a usable global model (a site or the server failed)."""


def nvflare_available() -> bool:
    return importlib.util.find_spec("nvflare") is not None


def require_nvflare() -> None:
    """Fail with an actionable message before any NVFlare import (imports stay lazy everywhere else)."""
    if not nvflare_available():
        raise FederationUnavailableError(
            f"federated learning needs NVIDIA FLARE, which is not installed here; install it with: {INSTALL_HINT}"
        )
