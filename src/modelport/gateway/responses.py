"""Responses the gateway makes itself: platform errors as `{"error_code", "error_msg", "request_id"}` JSON.

Everything else the client sees comes from the model, untouched; only these bodies are ours.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelport.errors import PlatformError

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def send_error(send: Send, err: PlatformError, request_id: bytes) -> None:
    body = json.dumps(err.body(request_id.decode("latin-1")), ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                (b"x-request-id", request_id),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
