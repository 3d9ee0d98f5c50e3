"""One inference call of a batch record to one instance, over the gateway's pooled keep-alive client.

Requests are built here (a JSON body for CSV rows, a multipart upload for files); the connection
handling is `modelport.gateway.upstream`'s. A call ends in a `Reply` (whatever status the model
answered) or raises `Transient` when it is worth trying again: the instance could not be reached,
dropped the connection before answering, answered 502/503/504, or did not answer in time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from modelport.gateway.upstream import Connection, Pool, UpstreamError

_RETRYABLE_STATUS = frozenset({502, 503, 504})
_JSON = b"application/json"
_TIMED_OUT = "timed out"


class Transient(Exception):
    """The call failed in a way another attempt may not: the record goes back in the queue.

    `sent` is False when the request never reached the instance (it could not be connected to).
    """

    def __init__(self, detail: str, *, sent: bool = True) -> None:
        super().__init__(detail)
        self.sent = sent


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


def json_request(path: str, body: bytes) -> tuple[bytes, bytes]:
    """Head (without host) and body of a JSON POST."""
    return _head(path, _JSON, len(body)), body


def file_request(path: str, field: str, filename: str, content: bytes) -> tuple[bytes, bytes]:
    """Head (without host) and body of a multipart/form-data POST with one file in `field`."""
    boundary = uuid.uuid4().hex.encode()
    safe = filename.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
    part = (
        b'--%b\r\ncontent-disposition: form-data; name="%b"; filename="%b"\r\n'
        b"content-type: application/octet-stream\r\n\r\n" % (boundary, field.encode(), safe.encode())
    )
    body = b"".join((part, content, b"\r\n--%b--\r\n" % boundary))
    return _head(path, b"multipart/form-data; boundary=" + boundary, len(body)), body


def _head(path: str, content_type: bytes, length: int) -> bytes:
    return b"POST %b HTTP/1.1\r\ncontent-type: %b\r\ncontent-length: %d\r\n" % (
        path.encode(),
        content_type,
        length,
    )


class Deadlines:
    """Time limits of the calls in flight, enforced by one sweep a second rather than a timer per call
    (a timer per call costs more than the rest of the batch runner's per-record work).

    A call still running past its deadline has its connection aborted, which fails it as `Transient`.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._active: dict[Connection, float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, conn: Connection) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._active[conn] = time.monotonic() + self.timeout_s

    def done(self, conn: Connection) -> None:
        self._active.pop(conn, None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout_s / 4))
            now = time.monotonic()
            for conn in [c for c, deadline in self._active.items() if deadline < now]:
                del self._active[conn]
                conn.abort(_TIMED_OUT)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


async def call(pool: Pool, host: str, port: int, head: bytes, body: bytes, deadlines: Deadlines) -> Reply:
    """Send one request to `host:port` and read the whole answer."""
    reply = await _exchange(pool, (host, port), head, body, deadlines)
    if reply.status in _RETRYABLE_STATUS:
        raise Transient(f"the instance answered {reply.status}: {_snippet(reply.body)}")
    return reply


async def _exchange(pool: Pool, key: tuple[str, int], head: bytes, body: bytes, deadlines: Deadlines) -> Reply:
    request = b"".join((head, b"host: %b:%d\r\n\r\n" % (key[0].encode(), key[1]), body))
    fresh = False
    while True:
        conn = (None if fresh else pool.take(key)) or await _connect(pool, key)
        deadlines.watch(conn)
        try:
            conn.start()
            conn.write(request)
            await conn.head()
            chunks = []
            while True:
                chunk, done = await conn.read_body()
                chunks.append(chunk)
                if done:
                    break
        except UpstreamError as exc:
            conn.abort()
            if exc.detail == _TIMED_OUT:
                raise Transient(f"the instance did not answer within {deadlines.timeout_s:g} s") from None
            if conn.reused and not exc.responded and not fresh:
                fresh = True  # a kept-alive connection the instance closed meanwhile
                continue
            raise Transient(f"the instance dropped the connection ({exc.detail})") from None
        except BaseException:
            conn.abort()  # cancelled mid-exchange: the connection is in an unknown state
            raise
        finally:
            deadlines.done(conn)
        reply = Reply(conn.status, b"".join(chunks))
        conn.release()
        return reply


async def _connect(pool: Pool, key: tuple[str, int]):  # type: ignore[no-untyped-def]
    try:
        return await pool.connect(key)
    except UpstreamError as exc:
        raise Transient(exc.detail, sent=False) from None


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def model_error(reply: Reply) -> str:
    """The error_message of a record the model answered with a non-2xx status."""
    return f"the model answered HTTP {reply.status}: {_snippet(reply.body, 1000)}"
