"""REST client for annotation-server: every endpoint the Slicer module uses, with errors people can act on.

The server answers every mistake as `{"detail": "..."}` with a 4xx that already says what to do; this client
keeps that text, adds what the status means for someone sitting in Slicer (log in, ask an admin, wait), and
retries a busy server (503/429 with `Retry-After`) a few times before giving up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import requests

HINTS = {
    401: "log in again (Connection > Log in): the token is missing or has expired",
    403: "your account's role does not allow this; ask an admin for the role it needs",
    404: "it does not exist on this server (refresh the lists)",
    409: "someone else changed it first; refresh and try again",
    413: "the upload is larger than the server accepts (ANNOTATE_MAX_UPLOAD_MB)",
    429: "too many attempts; wait before trying again",
    503: "the server is busy; try again in a moment",
}


class ServerError(RuntimeError):
    """A failed call: `status` (None when the server could not be reached), the server's `detail`, and a
    message for the user that says what failed and what to do."""

    def __init__(self, message: str, status: int | None = None, detail: str = "", retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason or ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
    return str(detail)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AnnotationServerClient:
    def __init__(
        self,
        url: str,
        client_id: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
        max_wait_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.http = requests.Session()
        self.token: str | None = None
        self.username: str | None = None
        self.roles: list[str] = []

    # ------------------------------------------------------------------------------------------- transport
    def request(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> requests.Response:
        """One call; raises ServerError with a message for the user on anything but 2xx."""
        kwargs.setdefault("timeout", self.timeout_s)
        what = f"{method} {path}"
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, self.url + path, stream=stream, **kwargs)
            except requests.ConnectionError as exc:
                raise ServerError(
                    f"{what}: cannot reach {self.url} ({type(exc).__name__}); check the server URL and that the "
                    "server runs (annotate-server start)"
                ) from exc
            except requests.Timeout as exc:
                raise ServerError(
                    f"{what}: no answer within {self.timeout_s:.0f} s; the server is overloaded or "
                    "the network is slow, try again"
                ) from exc
            if response.ok:
                return response
            wait = _retry_after(response)
            if response.status_code == 503 and wait is not None and attempt < self.retries and wait <= self.max_wait_s:
                self.sleep(wait)
                continue
            break
        detail = _detail(response)
        status = response.status_code
        hint = HINTS.get(status, "see the server log (GET /logs/, admin)" if status >= 500 else "")
        if wait is not None:
            hint = f"{hint} (the server asks to wait {wait:g} s)"
        message = f"{what} failed ({status}): {detail}" + (f". What to do: {hint}" if hint else "")
        raise ServerError(message, status=status, detail=detail, retry_after_s=wait)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def _with_client(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        body = dict(body or {})
        if self.client_id and "client_id" not in body:
            body["client_id"] = self.client_id
        return body

    # ------------------------------------------------------------------------------------------------ auth
    def auth_required(self) -> bool:
        """Whether the server wants a login (GET /auth/ is 404 when logins are off)."""
        try:
            return bool(self.json("GET", "/auth/").get("enabled", True))
        except ServerError as exc:
            if exc.status == 404:
                return False
            raise

    def login(self, username: str, password: str) -> dict[str, Any]:
        answer = self.json(
            "POST", "/auth/token", data={"username": username, "password": password, "grant_type": "password"}
        )
        self.token = answer["access_token"]
        self.username = answer.get("username", username)
        self.roles = list(answer.get("roles", []))
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        return answer

    def logout(self) -> None:
        self.token, self.username, self.roles = None, None, []
        self.http.headers.pop("Authorization", None)

    # ----------------------------------------------------------------------------------------- info, data
    def info(self) -> dict[str, Any]:
        return self.json("GET", "/info/")

    def studies(self) -> dict[str, Any]:
        """Every image with its labels (MONAI Label's `output=all` document: `{"objects": {id: {...}}}`)."""
        return self.json("GET", "/datastore/", params={"output": "all"})

    def next_sample(self, strategy: str) -> dict[str, Any]:
        """The next image to annotate, reserved for this user ({} when every image is labeled)."""
        return self.json("POST", f"/activelearning/{strategy}", json=self._with_client())

    def has_image(self, image: str) -> bool:
        try:
            self.json("GET", "/datastore/image/info", params={"image": image})
            return True
        except ServerError as exc:
            if exc.status == 404:
                return False
            raise

    def download_image(self, image: str, target: Path) -> Path:
        response = self.request("GET", "/datastore/image", params={"image": image}, stream=True)
        with open(target, "wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
        return Path(target)

    def upload_image(self, path: Path, image: str | None = None) -> str:
        with open(path, "rb") as handle:
            answer = self.json(
                "PUT",
                "/datastore/image",
                params={"image": image} if image else None,
                files={"file": (Path(path).name, handle)},
                data={"params": json.dumps(self._with_client())},
            )
        return answer["image"]

    def put_label(self, image: str, path: Path, tag: str = "final", info: dict[str, Any] | None = None) -> dict:
        with open(path, "rb") as handle:
            return self.json(
                "PUT",
                "/datastore/label",
                params={"image": image, "tag": tag},
                files={"label": (Path(path).name, handle)},
                data={"params": json.dumps(self._with_client(info))},
            )

    def download_label(self, image: str, tag: str, folder: Path, version: int | None = None) -> Path:
        """The label file into `folder`, under the server's file name (its extension says its format)."""
        params: dict[str, Any] = {"label": image, "tag": tag}
        if version is not None:
            params["version"] = version
        response = self.request("GET", "/datastore/label", params=params)
        disposition = response.headers.get("Content-Disposition", "")
        name = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else f"{image}.nii.gz"
        target = Path(folder) / Path(name).name
        target.write_bytes(response.content)
        return target

    def infer(self, model: str, image: str, target: Path, params: dict[str, Any] | None = None) -> Path:
        """Auto-segment a datastore image; the label file (on the image's grid) is written to `target`."""
        response = self.request(
            "POST",
            f"/infer/{model}",
            params={"image": image, "output": "image"},
            data={"params": json.dumps(self._with_client(params))},
        )
        Path(target).write_bytes(response.content)
        return Path(target)

    # ----------------------------------------------------------------------------------------- sessions
    def open_session(
        self,
        image: str,
        model: str | None = None,
        label: str | None = None,
        from_label: str | None = None,
        from_version: int | None = None,
    ) -> dict[str, Any]:
        body = {"image": image, "model": model, "label": label, "from_label": from_label, "from_version": from_version}
        return self.json(
            "POST", "/interactive/sessions", json=self._with_client({k: v for k, v in body.items() if v is not None})
        )

    def prompt(self, session_id: str, prompt: dict[str, Any], new_object: bool = False) -> dict[str, Any]:
        body = {"prompt": prompt, "new_object": bool(new_object)}
        return self.json("POST", f"/interactive/sessions/{session_id}/prompt", json=body)

    def undo(self, session_id: str) -> dict[str, Any]:
        return self.json("POST", f"/interactive/sessions/{session_id}/undo")

    def redo(self, session_id: str) -> dict[str, Any]:
        return self.json("POST", f"/interactive/sessions/{session_id}/redo")

    def reset(self, session_id: str, locked: Iterable[str] = ()) -> dict[str, Any]:
        """Clear the session's mask; the `locked` labels keep their voxels."""
        return self.json("POST", f"/interactive/sessions/{session_id}/reset", json={"locked_labels": sorted(locked)})

    def session_mask(self, session_id: str) -> bytes:
        """The server's whole label map (.nii.gz bytes on the image grid)."""
        return self.request("GET", f"/interactive/sessions/{session_id}/mask").content

    def save_session(self, session_id: str, tag: str = "final", info: dict[str, Any] | None = None) -> dict:
        body = self._with_client({"tag": tag, "info": info or {}})
        return self.json("POST", f"/interactive/sessions/{session_id}/save", json=body)

    def close_session(self, session_id: str) -> None:
        self.request("DELETE", f"/interactive/sessions/{session_id}")

    # ----------------------------------------------------------------------------------- model versions
    def model_versions(self, model: str) -> dict[str, Any]:
        return self.json("GET", f"/models/{model}/versions")

    def promote(self, model: str, version: int, reason: str = "") -> dict[str, Any]:
        body = self._with_client({"version": int(version), "reason": reason})
        return self.json("POST", f"/models/{model}/promote", json=body)

    def rollback(self, model: str, to: int | None = None, reason: str = "") -> dict[str, Any]:
        body = self._with_client({"reason": reason, **({"to": int(to)} if to else {})})
        return self.json("POST", f"/models/{model}/rollback", json=body)

    # ------------------------------------------------------------------------------------------ training
    def start_training(self, model: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.json("POST", f"/train/{model}", json=params or {})

    def stop_training(self) -> dict[str, Any] | None:
        return self.json("DELETE", "/train/")

    def training_status(self) -> dict[str, Any] | None:
        try:
            return self.json("GET", "/train/")
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise

    def training_events(self, job: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events as (event, data) pairs, until the `end` event (or the stream closes)."""
        response = self.request(
            "GET", "/train/events", params={"job": job} if job else None, stream=True, timeout=(10, None)
        )
        event, data = "message", []
        with response:
            for raw in response.iter_lines(decode_unicode=True):
                line = raw or ""
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                        if event == "end":
                            return
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    # ----------------------------------------------------------------------------------------- federated
    def queue(self, status: str | None = None, limit: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self.json("GET", "/fl/queue", params=params)

    def approve(self, entry_id: int) -> dict[str, Any]:
        return self.json(
            "POST",
            f"/fl/queue/{int(entry_id)}/approve",
            json={"reviewer": self.username or self.client_id or "reviewer"},
        )

    def exclude(self, entry_id: int, reason: str) -> dict[str, Any]:
        if not reason.strip():
            raise ServerError("give a reason for excluding the entry (it is kept in the audit)")
        body = {"reason": reason, "reviewer": self.username or self.client_id or "reviewer"}
        return self.json("POST", f"/fl/queue/{int(entry_id)}/exclude", json=body)

    def effort(self, bucket: str = "week") -> dict[str, Any]:
        return self.json("GET", "/fl/effort", params={"bucket": bucket})
