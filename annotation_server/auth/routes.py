"""The /auth router MONAI Label clients probe and log in through; mounted only when auth is on, so with
auth off `GET /auth/` is a 404, which every client reads as "no login needed"."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Form, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from annotation_server.api.routing import CompatRouter
from annotation_server.auth.dependencies import bearer, current_principal
from annotation_server.auth.roles import Principal
from annotation_server.auth.service import AuthenticationError, AuthService
from annotation_server.auth.throttle import TooManyAttemptsError

router = CompatRouter(tags=["auth"])
CLIENT_ID = "annotation-server"


@router.get("/auth/", summary="Is login required? (404 when auth is off)")
def auth_info(request: Request) -> dict[str, Any]:
    return {"enabled": True, "client_id": CLIENT_ID, "realm": str(request.base_url).rstrip("/") + "/auth"}


@router.post("/auth/token", summary="Log in: form username, password (grant_type=password); returns a bearer token")
async def token(
    request: Request,
    username: str = Form(..., description="user name, as added with `annotate-server users add`"),
    password: str = Form(...),
    grant_type: str | None = Form("password", description="OAuth2 password grant; only 'password' is accepted"),
) -> dict[str, Any]:
    if grant_type not in (None, "", "password"):
        raise HTTPException(
            400, f"unsupported grant_type '{grant_type}': log in with grant_type=password, username and password"
        )
    auth: AuthService = request.app.state.services.auth
    address = request.client.host if request.client else "unknown"
    try:
        issued = await run_in_threadpool(auth.login, username, password, address)  # scrypt is slow on purpose
    except AuthenticationError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    except TooManyAttemptsError as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    return {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "username": issued.principal.username,
        "roles": issued.principal.roles,
    }


@router.post("/auth/logout", summary="Log out: the bearer token is revoked and refused from now on (401 after)")
async def logout(request: Request, token: str | None = Depends(bearer)) -> dict[str, Any]:
    auth: AuthService = request.app.state.services.auth
    try:
        address = request.client.host if request.client else "unknown"
        username = await run_in_threadpool(auth.logout, token, address)
    except AuthenticationError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    return {"username": username, "revoked": True}


@router.get("/auth/token/valid", summary="The logged-in user (401 when the bearer token is missing or invalid)")
def token_valid(principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    return {"username": principal.username, "email": None, "name": principal.username, "roles": principal.roles}
