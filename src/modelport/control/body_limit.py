"""Request body limit of the management API: 413 with a code, before the app parses anything.

A declared `Content-Length` over the limit is refused without reading the body; a body without
one (chunked) is read up to the limit, then refused or replayed to the app as it came.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelport.errors import E, PlatformError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(scope, send, PlatformError(E.INVALID_ARGUMENT, detail="bad Content-Length"))
            elif int(declared) > self.limit:
                await self._refuse(scope, send, PlatformError(E.BODY_TOO_LARGE_API, limit=self.limit))
            else:
                await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        parts, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send, PlatformError(E.BODY_TOO_LARGE_API, limit=self.limit))
                return
            parts.append(chunk)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, err: PlatformError) -> None:
        rid = next((v for n, v in scope["headers"] if n == b"x-request-id"), None)
        rid_text = rid.decode("latin-1") if rid else uuid.uuid4().hex
        body = json.dumps(err.body(rid_text)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"x-request-id", rid_text.encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
