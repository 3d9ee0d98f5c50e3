"""WebSocket sessions: a service's `websocket` hook served over an accepted upgrade.

The runtime accepts an upgrade at any of the package's API urls (config.json `apis`, `/` by
default) when the service class defines the hook, in either form:

    async def websocket(self, messages: AsyncIterator[str | bytes]) -> AsyncIterator[Reply]:
        async for message in messages:        # runs on the event loop: never block in it
            yield f"echo: {message}"

    def websocket(self, messages: Iterator[str | bytes]) -> Iterator[Reply]:
        for message in messages:              # runs on a thread of its own: may block
            yield model(message)

`messages` yields each received message whole (fragmented frames are joined): text frames as
`str`, binary frames as `bytes`. Each yielded reply is sent at once: `str` as a text frame,
`bytes` as a binary frame, anything else as JSON text. Messages up to MODELPORT_WS_MAX_BYTES
(default 16 MiB) are accepted; larger ones close the session with 1009.

Closing: the hook returning closes with 1000; the hook raising closes with 1011 and the reason
`MR.0105 <type>: <message>` (cut to the 123 bytes a close frame allows), with the traceback in
the log. A client that closes ends `messages`; a hook that yields after that is closed at its
`yield` (GeneratorExit). Server shutdown closes sessions with 1012.

Refusals happen before the upgrade, as plain HTTP with a platform error body: no `websocket`
hook 403 MP.4405, unknown path 404 MP.4404, model not loaded 503 MP.4503.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

from modelport.errors import E, ErrorSpec, PlatformError
from modelport.runtime.asgi import Receive, Scope, Send
from modelport.runtime.pool import END, AsyncItems, Failure, ThreadedIterator
from modelport.runtime.results import JSON, MODEL_ERROR_CODE, describe, to_json

CLOSE_NORMAL = 1000
CLOSE_HANDLER_ERROR = 1011
CLOSE_REASON_MAX_BYTES = 123
WS_MAX_BYTES_DEFAULT = 16 * 1024 * 1024


async def refuse(scope: Scope, receive: Receive, send: Send, spec: ErrorSpec, **fields: Any) -> None:
    """Answer the upgrade request with a plain HTTP platform error instead of accepting it."""
    await receive()  # websocket.connect
    err = PlatformError(spec, **fields)
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": err.message[:100]})  # -> 403
        return
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": err.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def serve_session(scope: Scope, receive: Receive, send: Send, service: Any) -> None:
    """Run one WebSocket session through `service.websocket`, or refuse it if there is no hook."""
    hook = getattr(service, "websocket", None)
    if hook is None:
        await refuse(scope, receive, send, E.RUNTIME_NO_WEBSOCKET, path=scope["path"])
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    session = _Session(receive)
    if inspect.isasyncgenfunction(hook):
        replies: Any = AsyncItems(hook(session.messages()), _frame)
    else:
        loop = asyncio.get_running_loop()
        replies = ThreadedIterator(lambda: hook(session.blocking_messages(loop)), _frame)
        threading.Thread(target=replies.drive, name="modelport-websocket", daemon=True).start()
    try:
        await _pump(send, replies, session)
    except asyncio.CancelledError:
        pass  # shutdown past its grace period: uvicorn already sent 1012 when it began
    finally:
        await replies.close()


class _Session:
    """The receiving side of one session: messages for the hook, and whether the client left."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.client_closed = False

    async def next_message(self) -> str | bytes | None:
        if self.client_closed:
            return None
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else message.get("bytes") or b""
        self.client_closed = True  # websocket.disconnect: the client closed, or the connection broke
        return None

    async def messages(self) -> AsyncIterator[str | bytes]:
        while (message := await self.next_message()) is not None:
            yield message

    def blocking_messages(self, loop: asyncio.AbstractEventLoop) -> Iterator[str | bytes]:
        """`messages` for a hook running on a thread: each one fetched by the loop."""
        while True:
            message = asyncio.run_coroutine_threadsafe(self.next_message(), loop).result()
            if message is None:
                return
            yield message


def _frame(reply: Any) -> dict[str, Any]:
    if isinstance(reply, str):
        return {"type": "websocket.send", "text": reply}
    if isinstance(reply, bytes | bytearray | memoryview):
        return {"type": "websocket.send", "bytes": bytes(reply)}
    return {"type": "websocket.send", "text": to_json(reply)}


async def _pump(send: Send, replies: Any, session: _Session) -> None:
    while True:
        frame = await replies.ask()
        if frame is END:
            await _close(send, session, CLOSE_NORMAL, "")
            return
        if frame.__class__ is Failure:
            traceback.print_exception(frame.exc)
            await _close(send, session, CLOSE_HANDLER_ERROR, f"{MODEL_ERROR_CODE} {describe(frame.exc)}")
            return
        if session.client_closed:
            return  # nobody to send to; the caller closes the hook
        try:
            await send(frame)
        except OSError:  # uvicorn's ClientDisconnected: the connection is gone
            session.client_closed = True
            return


async def _close(send: Send, session: _Session, code: int, reason: str) -> None:
    if session.client_closed:
        return
    with contextlib.suppress(OSError):
        await send({"type": "websocket.close", "code": code, "reason": _cut(reason)})


def _cut(reason: str) -> str:
    raw = reason.encode()
    if len(raw) <= CLOSE_REASON_MAX_BYTES:
        return reason
    return raw[: CLOSE_REASON_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."
