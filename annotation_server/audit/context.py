"""`Audit`: the audit log as one request sees it, with who is calling and from where already filled in.

Routers take it as a dependency (`audit: Audit = Depends(request_audit)`) and call `audit.record(action,
target, **details)` after the thing they audit has happened, so a refused or failed request leaves no
"done" record.

The client address is the connection's peer; behind a reverse proxy uvicorn replaces it with the
X-Forwarded-For address when the proxy is trusted (`FORWARDED_ALLOW_IPS`, see docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from annotation_server.audit.log import AuditLog, AuditRecord
from annotation_server.auth.dependencies import current_principal
from annotation_server.auth.roles import Principal

ANONYMOUS = "anonymous"  # the actor while auth is off: nobody proved who they are


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def actor_name(principal: Principal) -> str:
    return principal.username if principal.authenticated else ANONYMOUS


@dataclass(frozen=True)
class Audit:
    log: AuditLog
    actor: str
    address: str | None

    def record(self, action: str, target: str | None = None, **details: Any) -> AuditRecord:
        """Append a record (blocking: an fsync). Sync routes call this; async routes `arecord`."""
        return self.log.record(action, self.actor, self.address, target, **details)

    async def arecord(self, action: str, target: str | None = None, **details: Any) -> AuditRecord:
        return await run_in_threadpool(self.record, action, target, **details)


def request_audit(request: Request, principal: Principal = Depends(current_principal)) -> Audit:
    """The route dependency: the server's audit log with this request's actor and address."""
    return Audit(request.app.state.services.audit, actor_name(principal), client_address(request))
