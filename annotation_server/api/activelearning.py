"""POST /activelearning/{strategy}: which image to annotate next."""

from __future__ import annotations

from typing import Any

from fastapi import Body, Depends

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.errors import InvalidRequestError
from annotation_server.services import Services

router = CompatRouter(tags=["activelearning"])


@router.post("/activelearning/{strategy}", summary="Next image to annotate ({} when every image is labeled)")
def next_sample(
    strategy: str,
    params: Any = Body(None, description="optional JSON object; clients add client_id"),
    services: Services = Depends(get_services),
) -> dict[str, Any]:
    if params is not None and not isinstance(params, dict):
        raise InvalidRequestError("the body must be a JSON object (or empty)")
    return services.active_learning.next_sample(strategy, params or {})
