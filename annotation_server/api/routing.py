"""A router that answers every path with and without its trailing slash.

MONAI Label's clients call `/info/` and `/datastore/?output=all`, people type `/info`; FastAPI would
answer one of them with a 307 redirect, which some clients do not follow for PUT/POST bodies. Each
route is therefore registered twice, the alias hidden from the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


def _alias(path: str) -> str | None:
    if path in ("", "/"):
        return None
    return path[:-1] if path.endswith("/") else f"{path}/"


class CompatRouter(APIRouter):
    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        alias = _alias(path)
        if alias is not None:
            hidden = {**kwargs, "include_in_schema": False}
            hidden.pop("operation_id", None)
            super().add_api_route(alias, endpoint, **hidden)
