"""The multipart answer of POST /infer/{model}, byte-for-byte in the layout MONAI Label clients parse.

3D Slicer and the Python client parse it with `cgi.FieldStorage`; MITK splits the body on the boundary by
hand and looks for the literal part headers. So: the `params` part first with `Content-Type:
application/json` and no filename, then the `image` part with a filename that carries the extension and
`Content-Type: application/octet-stream`; an unquoted 32-hex boundary; one body with Content-Length.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi.responses import Response


def multipart_result(params: dict[str, Any], filename: str, data: bytes) -> Response:
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="params"\r\n'
        "Content-Type: application/json\r\n"
        "\r\n"
        f"{json.dumps(params)}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n"
        "\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return Response(content=body, media_type=f"multipart/form-data; boundary={boundary}")
