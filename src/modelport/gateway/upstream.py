"""Upstream: the pooled keep-alive HTTP/1.1 client the gateway uses to talk to model instances.

Built straight on asyncio Protocols and httptools' response parser because it sits on the hot
path of every prediction: one `Connection` carries one exchange at a time, the response head and
body are handed over as they are parsed, and a finished connection goes back to its endpoint's
idle stack for the next request.

Invariants:
- a connection is on an idle stack only when no exchange uses it, its last response was read to
  the end, the server allowed keep-alive and it has not been closed;
- every failure of an exchange surfaces as `UpstreamError`, whose `responded` says whether any
  byte of a response arrived (before that, the caller may safely retry elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import httptools

Key = tuple[str, int]

# Read side flow control: stop reading from the instance while this much body waits for the client.
_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """An exchange failed at the connection level (refused, reset, closed early, garbled)."""

    def __init__(self, detail: str, *, responded: bool = False, connected: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.responded = responded  # some response byte arrived: never retry
        self.connected = connected  # False: the connection could not even be opened


class Waitable:
    """A protocol with one consumer task, which waits (`_wait`) until the protocol has news for it
    (`_wake`): a bare future each time, cheaper than an asyncio.Event."""

    _loop: asyncio.AbstractEventLoop
    _waiter: asyncio.Future[None] | None

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(Waitable, asyncio.Protocol):
    """One TCP connection to an instance; one request/response exchange at a time."""

    def __init__(self, pool: Pool, key: Key) -> None:
        self._pool = pool
        self.key = key
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.reused = False  # taken from the idle stack (may have been closed by the server meanwhile)
        self.closed = False
        # One parser per connection: llhttp starts over by itself after each complete message.
        self._parser = httptools.HttpResponseParser(self)
        self._busy = False  # an exchange is using the connection
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self._reading_paused = False
        self._reset(False)

    def _reset(self, head_only: bool) -> None:
        self._head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_ready = False
        self.complete = False
        self.responded = False
        self._interim = False
        self._framed = False  # Content-Length or chunked: the end is known without EOF
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._exc: UpstreamError | None = None

    # -- exchange API (used by the gateway) --------------------------------------------------

    def start(self, *, head_only: bool = False) -> None:
        """Begin an exchange; `head_only` for HEAD requests, whose responses carry no body."""
        self._reset(head_only)
        self._busy = True

    def write(self, data: bytes) -> None:
        if self.closed or self._exc is not None:
            raise self._exc or UpstreamError("connection closed by the instance", responded=self.responded)
        self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    async def head(self) -> None:
        """Wait until status and headers of the response are in `status` / `headers`."""
        while not self.head_ready:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    def take_body(self) -> bytes:
        """All body bytes received so far (and more will be read if reading was paused)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    @property
    def body_pending(self) -> bool:
        """True when `read_body` would have to wait for the instance."""
        return not self._chunks and not self.complete and self._exc is None

    async def read_body(self) -> tuple[bytes, bool]:
        """The next piece of body and whether the response is complete with it."""
        while not self._chunks and not self.complete:
            if self._exc is not None:
                raise self._exc
            await self._wait()
        return self.take_body(), self.complete

    def release(self) -> None:
        """Give the connection back after an exchange: pooled if reusable, else closed."""
        reusable = self.complete and self._keep_alive and not self._head_only and not self.closed
        self._busy = False
        self._waiter = None
        if not (reusable and self._pool._put(self)):
            self.close()

    def close(self) -> None:
        self._busy = False
        if not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    def abort(self, detail: str = "aborted") -> None:
        """Drop the connection at once (client gone, timeout, bad exchange); never pooled again."""
        if not self.closed:
            self.closed = True
            self.transport.abort()  # type: ignore[union-attr]
        self._fail(UpstreamError(detail, responded=self.responded))

    def _fail(self, exc: UpstreamError) -> None:
        if self._exc is None and not self.complete:
            self._exc = exc
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(exc)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # Bytes while idle: the instance is not speaking HTTP/1.1 keep-alive properly.
            self.abort("unexpected data on an idle connection")
            return
        self.responded = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.abort("protocol upgrade is not supported on this path")
        except httptools.HttpParserError as exc:
            self.abort(f"malformed response from the instance ({exc})")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._busy:
            self._pool._forget(self)
        elif self.head_ready and not self.complete and not self._framed and not self._head_only:
            # A response delimited by the end of the connection ends here.
            self.complete = True
            self._keep_alive = False
            self._wake()
        detail = f"connection lost ({exc})" if exc else "connection closed by the instance"
        self._fail(UpstreamError(detail, responded=self.responded))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # Interim response (100 Continue, 103 Early Hints): wait for the real one.
            self._interim = True
            self.headers = []
            self._framed = False
            return
        self.status = status
        self.head_ready = True
        if status in (204, 304):
            self._framed = True
        if self._head_only:
            # httptools cannot be told a HEAD response has no body; finish it here and never
            # reuse the connection, whose parser would otherwise wait for body bytes.
            self.complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()


class Pool:
    """Keep-alive connections per instance endpoint, at most `max_idle` idle ones each (LIFO)."""

    def __init__(self, *, max_idle: int = 64, connect_timeout_s: float = 5.0) -> None:
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[Key, list[Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def take(self, key: Key) -> Connection | None:
        """The most recently used idle connection to `key`, if any (no await: the hot path)."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self, key: Key) -> Connection:
        """A new connection to `key`."""
        loop = self.loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self, key), key[0], key[1]), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]} ({exc})", connected=False) from None
        return conn

    def _put(self, conn: Connection) -> bool:
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= self.max_idle:
            return False
        conn.reused = False
        idle.append(conn)
        return True

    def _forget(self, conn: Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def idle_count(self, key: Key) -> int:
        return len(self._idle.get(key, ()))

    def drop(self, key: Key) -> None:
        """Close the idle connections to one endpoint (it went away or is down)."""
        for conn in self._idle.pop(key, ()):
            conn.close()

    def retain(self, keys: Iterable[Key]) -> None:
        """Close idle connections to every endpoint not in `keys`."""
        keep = set(keys)
        for key in [k for k in self._idle if k not in keep]:
            self.drop(key)

    async def aclose(self) -> None:
        for key in list(self._idle):
            self.drop(key)
