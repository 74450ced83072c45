"""POST /activelearning/{strategy}: which image to annotate next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Body, Depends, Request

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.auth.dependencies import acting_user, current_principal
from annotation_server.auth.roles import Principal, Role
from annotation_server.errors import InvalidRequestError
from annotation_server.services import Services

router = CompatRouter(tags=["activelearning"])


@router.post("/activelearning/{strategy}", summary="Next image to annotate ({} when every image is labeled)")
def next_sample(
    strategy: str,
    request: Request,
    params: Any = Body(None, description="optional JSON object; clients add client_id"),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> dict[str, Any]:
    """The image is reserved for the caller (the logged-in user with auth on, else their client_id, else their
    address) so that annotators asking at the same time get different images."""
    if params is not None and not isinstance(params, dict):
        raise InvalidRequestError("the body must be a JSON object (or empty)")
    client_id = (params or {}).get("client_id")
    declared = client_id if isinstance(client_id, str) and client_id else None
    address = f"address:{request.client.host if request.client else 'unknown'}"
    annotator = acting_user(principal, declared) or address
    answer = services.active_learning.next_sample(strategy, params or {}, annotator)
    if "path" in answer and not principal.has(Role.admin):
        # Server paths are for admins. 3D Slicer loads `path` only when it exists on its own machine and
        # otherwise downloads GET /datastore/image?image=<id>, so a bare file name keeps it working.
        answer["path"] = Path(answer["path"]).name
    return answer
