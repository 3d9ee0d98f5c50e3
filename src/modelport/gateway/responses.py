"""Responses the gateway makes itself: platform errors as `{"error_code", "error_msg", "request_id"}` JSON.

Everything else the client sees comes from the model, untouched; only these bodies are ours.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelport.errors import PlatformError

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def send_error(send: Send, err: PlatformError, request_id: bytes, kind: str = "http") -> None:
    """Send `err` as the response; `kind` "websocket.http" refuses a WebSocket upgrade with it."""
    body = json.dumps(err.body(request_id.decode("latin-1")), ensure_ascii=False).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", request_id),
    ]
    retry_after = err.fields.get("retry_after")
    if retry_after is not None:  # 429s say when to come back (RFC 9110 §10.2.3)
        headers.append((b"retry-after", b"%d" % retry_after))
    await send({"type": f"{kind}.response.start", "status": err.status, "headers": headers})
    await send({"type": f"{kind}.response.body", "body": body, "more_body": False})
