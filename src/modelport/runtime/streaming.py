"""Streaming responses: a handler's (async) iterator sent as Server-Sent Events or JSON lines.

When `service.inference(data)` returns an iterator instead of a value — a generator or an
async generator (usually from `_inference`, passed through by the default `_postprocess`), or
any other (async) iterator such as transformers' `TextIteratorStreamer` — the response is a
stream of its items, each written to the socket as soon as it is produced:

* `text/event-stream;charset=UTF-8` (the default): each item is one event, `data: <item>\\n\\n`;
  a `str` is sent as it is (one `data:` line per line of it), `bytes` are written raw (so a
  handler can send its own `event:`/`id:` fields), anything else as JSON. With config.json
  `"stream": {"done_event": true}` a normal end sends `data: [DONE]\\n\\n` last.
* `application/x-ndjson` when the request's `Accept` asks for it (before or instead of
  `text/event-stream`): one JSON value per line; a `str` that already holds a JSON object or
  array goes as it is, other strings are JSON-quoted, `bytes` are written raw.

A sync iterator runs on one handler thread (it counts against MODELPORT_HANDLER_THREADS while
it streams), pulled one item at a time; an async one runs on the event loop. Nothing runs
ahead of the client by more than the item being written.

Silence longer than `stream.keepalive_s` (default 15 s, 0 = off) sends a comment (`: keep-alive`;
a blank line in ndjson) so proxies do not cut an idle stream. The response headers go out
with the first item (or the first keep-alive), so a handler that fails before its first item
still answers a plain 500 `{"erno": "MR.0105", ...}`; a failure after that ends the stream with
an error event (`event: error` + `data: {"erno": "MR.0105", "msg": ...}`, or that object as the
last ndjson line) and the traceback goes to the log.

A client that disconnects stops the stream: a sync generator gets `GeneratorExit` at its
`yield` once its current step returns (`close()`); an async one is cancelled where it awaits
(`CancelledError`) or closed at its `yield` (`aclose()`). Its `finally:` blocks run either way.

SIGTERM lets streams in flight run on for the grace period (MODELPORT_GRACE_S); one still
running then ends with a platform error, `event: error` + `data: {"error_code": "MP.4504", ...}`
(a plain 503 if nothing was sent yet), and the process exits without waiting for a sync
generator's current step, so that generator may not see its `GeneratorExit`.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from modelport.errors import E, PlatformError
from modelport.packages import StreamConfig
from modelport.runtime.asgi import Receive, Scope, Send
from modelport.runtime.pool import END, AsyncItems, Failure, HandlerPool, ThreadedIterator
from modelport.runtime.results import JSON, model_error, to_json

SSE_TYPE = b"text/event-stream;charset=UTF-8"
NDJSON_TYPE = b"application/x-ndjson"


class ItemSource(Protocol):
    def ask(self) -> asyncio.Future[Any]: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class StreamFormat:
    """How items become bytes on the wire in one streaming format."""

    content_type: bytes
    encode: Callable[[Any], bytes]
    keepalive: bytes
    done: bytes  # sent at a normal end when done events are on
    error: Callable[[dict[str, str]], bytes]


def sse_event(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    text = item if isinstance(item, str) else to_json(item)
    if "\n" in text or "\r" in text:
        text = "\ndata: ".join(text.splitlines())
    return f"data: {text}\n\n".encode()


def ndjson_line(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str) and item.lstrip()[:1] in ("{", "["):
        return (item.rstrip("\r\n") + "\n").encode()
    return (to_json(item) + "\n").encode()


SSE = StreamFormat(
    SSE_TYPE,
    sse_event,
    b": keep-alive\n\n",
    b"data: [DONE]\n\n",
    lambda err: f"event: error\ndata: {to_json(err)}\n\n".encode(),
)
NDJSON = StreamFormat(NDJSON_TYPE, ndjson_line, b"\n", b"", lambda err: (to_json(err) + "\n").encode())


def choose_format(headers: list[tuple[bytes, bytes]]) -> StreamFormat:
    for name, value in headers:
        if name == b"accept":
            ndjson = value.find(b"application/x-ndjson")
            if ndjson < 0:
                return SSE
            sse = value.find(b"text/event-stream")
            return NDJSON if sse < 0 or ndjson < sse else SSE
    return SSE


def open_source(items: Any, fmt: StreamFormat, pool: HandlerPool) -> ItemSource:
    """Start pulling `items`: async iterators on the loop, sync ones on a handler thread."""
    if isinstance(items, AsyncIterator):
        return AsyncItems(items, fmt.encode)
    source = ThreadedIterator(lambda: items, fmt.encode)
    pool.run(source.drive, None, None)
    return source


async def respond(
    scope: Scope,
    receive: Receive,
    send: Send,
    items: Any,
    config: StreamConfig,
    pool: HandlerPool,
) -> None:
    """Stream `items` (the handler's iterator) as the response, until it ends or the client goes."""
    out = _Output(send, choose_format(scope["headers"]))
    source = open_source(items, out.fmt, pool)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await _pump(out, source, config, gone)
    except asyncio.CancelledError:
        # Only a shutdown past its grace period cancels a stream: end it saying so, as the
        # plain path answers 503 MP.4504, rather than leaving uvicorn to log a bare error.
        await out.stopped()
    finally:
        gone.cancel()
        await source.close()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _pump(out: _Output, source: ItemSource, config: StreamConfig, gone: asyncio.Future[None]) -> None:
    keepalive = config.keepalive_s or None
    pending = source.ask()
    while True:
        done, _ = await asyncio.wait((pending, gone), timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
        if gone in done:
            return  # the client left; `respond` closes the source
        if not done:  # silence: keep proxies from cutting the stream
            await out.write(out.fmt.keepalive)
            continue
        item = pending.result()
        if item is END:
            break
        if item.__class__ is Failure:
            traceback.print_exception(item.exc)
            await out.fail(500, model_error(item.exc))
            return
        await out.write(item)
        pending = source.ask()
    await out.write(out.fmt.done if config.done_event else b"", more=False)


class _Output:
    """The response side of one stream: headers go out with the first bytes written."""

    def __init__(self, send: Send, fmt: StreamFormat) -> None:
        self.send = send
        self.fmt = fmt
        self.started = False
        self.ended = False

    async def write(self, chunk: bytes, more: bool = True) -> None:
        if not self.started:
            self.started = True
            headers = [
                (b"content-type", self.fmt.content_type),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer this response
            ]
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.ended = not more
        await self.send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def fail(self, status: int, error: dict[str, str]) -> None:
        """End with `error`: an error event once the stream has begun, else a plain JSON answer."""
        if self.ended:
            return
        if self.started:
            await self.write(self.fmt.error(error), more=False)
            return
        self.started = self.ended = True
        body = to_json(error).encode()
        headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def stopped(self) -> None:
        err = PlatformError(E.RUNTIME_STOPPED)
        await self.fail(err.status, err.body())
