"""Request body limits enforced as the body arrives, before any route reads it (pure ASGI middleware).

Why here and not in the routes: a route sees an upload only after Starlette has spooled all of it, so a
1,000 MB upload against a 16 MB limit was received in full before its 413; a 10 MB JSON prompt was parsed
(and stalled the event loop) before anything looked at its size; a body sent one byte at a time held a
worker forever. This middleware:

- answers 413 at once when `Content-Length` is over the limit (the body is never read), else counts bytes
  as they stream in and answers 413 as soon as the count passes it;
- limits JSON and url-encoded bodies to `ANNOTATE_MAX_JSON_KB`, everything else (multipart uploads) to
  `ANNOTATE_MAX_UPLOAD_MB` plus 1 MB for the multipart framing and form fields;
- answers 408 when the whole body has not arrived within `ANNOTATE_BODY_TIMEOUT_S`;
- parses JSON bodies strictly (`strict_json`: no NaN/Infinity, 64-bit integers, 32 levels) and answers 422
  naming the problem, then hands the same bytes on to the route.

Pure ASGI rather than `BaseHTTPMiddleware` for the reason given in `metrics.py` (no extra task per request).
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from annotation_server.api import strict_json
from annotation_server.errors import InvalidRequestError

logger = logging.getLogger(__name__)

MULTIPART_SLACK = 1 << 20


class _Refused(Exception):
    """Raised inside `receive` to stop the route; the middleware answers with `status` and `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (408, 413):
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_json_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes + MULTIPART_SLACK
        self.max_json_bytes = max_json_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = media == b"application/json" or media.endswith(b"+json")
        small = is_json or media == b"application/x-www-form-urlencoded"
        limit = self.max_json_bytes if small else self.max_upload_bytes
        what = (
            f"{'JSON' if is_json else 'form'} body over the {self.max_json_bytes // 1024} KB limit "
            "(ANNOTATE_MAX_JSON_KB)"
            if small
            else f"upload over the {(self.max_upload_bytes - MULTIPART_SLACK) >> 20} MB limit (ANNOTATE_MAX_UPLOAD_MB)"
        )
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if length > limit:
                await _answer(send, 413, f"request refused: {what}; Content-Length is {length}")
                return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        body_done = False
        refused: _Refused | None = None
        started = False

        def refuse(status: int, detail: str) -> _Refused:
            nonlocal refused
            refused = _Refused(status, detail)  # set now: the route may catch the error and answer 400 itself
            return refused

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: never time that out
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise refuse(
                    408, f"request body not received within {self.timeout_s:g} s (ANNOTATE_BODY_TIMEOUT_S)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise refuse(413, f"request refused: {what}")
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:
                return  # the route's own answer to the broken body is replaced by ours
            started = started or message["type"] == "http.response.start"
            await send(message)

        app_receive: Receive = limited_receive
        try:
            if is_json:
                app_receive = await self._checked_json(limited_receive)
            await self.app(scope, app_receive, guarded_send)
        except _Refused as exc:
            refused = exc
        except InvalidRequestError as exc:
            refuse(422, str(exc))
        except Exception:
            if refused is None:
                raise
        if refused is not None and not started:
            logger.info("%s %s -> %d: %s", scope["method"], scope["path"], refused.status, refused.detail)
            await _answer(send, refused.status, refused.detail)

    @staticmethod
    async def _checked_json(receive: Receive) -> Receive:
        """Read the (size-limited) JSON body, refuse it unless strict JSON, and replay it to the route."""
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Refused(400, "client disconnected before sending the whole body")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body.strip():
            strict_json.loads(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
