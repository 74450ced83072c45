"""FastAPI dependencies: `authorize` (the route table in `policy`, applied to every API router in
server.py), `require_role(role)` for a single route, and `current_principal` for handlers that need to
know who is calling (a saved label's author).

401 and 403 follow MONAI Label: `{"detail": "Not authenticated"}` with `WWW-Authenticate: Bearer` when no
token is sent, and a 403 naming the role that is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer

from annotation_server.auth.policy import required_role
from annotation_server.auth.roles import Principal, Role
from annotation_server.auth.service import AuthenticationError, AuthService

_Declared = TypeVar("_Declared", str, str | None)

# auto_error=False: with auth off, or on an open route, a missing header is not an error by itself.
bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def _auth(request: Request) -> AuthService:
    return request.app.state.services.auth


def _resolve(request: Request, token: str | None) -> Principal:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    try:
        principal = _auth(request).principal(token)
    except AuthenticationError as exc:
        challenge = "Bearer" if token is None else 'Bearer error="invalid_token"'
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": challenge}) from None
    request.state.principal = principal
    return principal


def _forbid(request: Request, principal: Principal, role: Role) -> HTTPException:
    route = getattr(request.scope.get("route"), "path", request.url.path)
    return HTTPException(
        403,
        f'Role "{role.value}" is required for {request.method} {route}; user "{principal.username}" has role '
        f'"{principal.role.value}". Ask the site admin to grant it: '
        f"annotate-server users role {principal.username} {role.value}",
    )


async def current_principal(request: Request, token: str | None = Depends(bearer)) -> Principal:
    """Who is calling: the token's user, or the built-in admin while auth is off."""
    return _resolve(request, token)


async def authorize(request: Request, token: str | None = Depends(bearer)) -> None:
    """Router-level guard: the role `policy.required_role` names for this method and route template."""
    if not _auth(request).enabled:
        return
    route = getattr(request.scope.get("route"), "path", request.url.path)
    role = required_role(request.method, route)
    if role is None:
        return
    principal = _resolve(request, token)
    if not principal.has(role):
        raise _forbid(request, principal, role)


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency for one route that needs `role` (or higher), whatever the route table says."""

    async def check(request: Request, principal: Principal = Depends(current_principal)) -> Principal:
        if not principal.has(role):
            raise _forbid(request, principal, role)
        return principal

    return check


def acting_user(principal: Principal, declared: _Declared) -> _Declared | str:
    """The name recorded for who did something (a label's author, a queue entry's reviewer): the logged-in
    user when auth is on (a client's own `client_id` is only a claim, and 3D Slicer sends a fixed one), else
    what the client declared."""
    return principal.username if principal.authenticated else declared
