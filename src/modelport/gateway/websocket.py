"""WebSocket proxying: a client's session relayed message by message to a session with one instance.

The gateway accepts an upgrade at `/v1/infers/{service_id}/...` of a service deployed with
`websocket_upgrade` after the same head, auth and admission steps as an HTTP request (so the
service's QPS limit counts handshakes, never messages), picks an instance as for HTTP, opens a
WebSocket to it at the same sub-path and query, and then relays messages both ways:

- text stays text, binary stays binary; a message over `FRAGMENT_BYTES` goes to the client in
  fragments of at most that size (`GatewayWebSocketProtocol`, the uvicorn protocol the gateway is
  served with; the instance leg carries whole messages);
- both sides close together, the other side's code and reason passed on (a close without a code,
  1005, becomes 1000); a client that vanishes (1006) closes the instance with 1001; an instance
  that vanishes, or breaks the protocol, closes the client with 1011 `ModelArts.4503 ...`; the
  gateway shutting down closes both with 1001;
- a client message over the service's body limit closes the session with 1009, and, with a
  per-session message rate limit configured, a client over it is closed with 1008 `MP.4211 ...`;
- an instance that refuses the upgrade has its HTTP status, headers and body relayed as they are;
  refusals of the gateway's own are HTTP errors with a platform error body.

Pings: each leg's WebSocket layer answers the other end's pings by itself (uvicorn pings clients,
the instance pings the gateway). The instance leg runs on websockets' sans-I/O protocol straight on
an asyncio Protocol, like `upstream.py` (measured: about half the CPU per message of the
`websockets` asyncio client or aiohttp's client; aiohttp also drops the body of a refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import WebSocketURI

from modelport.errors import E, PlatformError
from modelport.gateway.balance import Balancer, ServicePlan, Target
from modelport.gateway.metrics import StreamMetrics, streams_of
from modelport.gateway.ratelimit import TokenBucket
from modelport.gateway.responses import send_error
from modelport.gateway.upstream import UpstreamError, Waitable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FRAGMENT_BYTES = 64 * 1024  # spec §5.4: outbound messages over 64 KB go in frames of at most 64 KB
INSTANCE_MAX_MESSAGE = 16 * 1024 * 1024  # as the python runtime's MODELPORT_WS_MAX_BYTES default
CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the connection is dropped
REASON_MAX_BYTES = 123  # what a close frame can carry
# Read side flow control of the instance leg: stop reading while this much waits for the client.
_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
# Close codes an endpoint may send (RFC 6455 §7.4, plus the registered 1012-1014 and 3000-4999).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
# Response headers of a refused upgrade not relayed (hop-by-hop; the server adds its own date).
_REFUSAL_DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "date", "server"})


def as_request(scope: Scope) -> Scope:
    """The upgrade's scope as the HTTP steps read it: header names lower-case (uvicorn's
    WebSocket scope keeps the client's case) and a method."""
    return {**scope, "method": "GET", "headers": [(n.lower(), v) for n, v in scope["headers"]]}


def close_reason(err: PlatformError) -> str:
    """`<error code> <message>`, cut to what a close frame carries."""
    raw = f"{err.code} {err.message}".encode()
    if len(raw) <= REASON_MAX_BYTES:
        return raw.decode()
    return raw[: REASON_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."


def sendable(code: int, *, vanished: int) -> int:
    """`code` if an endpoint may send it; 1000 for "no code" (1005); `vanished` for anything else (1006)."""
    if code in _SENDABLE or 3000 <= code <= 4999:
        return code
    return 1000 if code == 1005 else vanished


async def refuse(send: Send, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Answer the upgrade request with a plain HTTP response instead of accepting it."""
    if await _can_answer(send, scope):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})


async def refuse_with_error(send: Send, scope: Scope, err: PlatformError, request_id: bytes) -> None:
    """Refuse the upgrade with a platform error (HTTP status and JSON body, as for HTTP requests)."""
    if await _can_answer(send, scope):
        await send_error(send, err, request_id, kind="websocket.http")


async def _can_answer(send: Send, scope: Scope) -> bool:
    """Whether the server lets us answer an upgrade with HTTP; if not, the upgrade is closed (a bare 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        return True
    await send({"type": "websocket.close", "code": 1008})
    return False


class InstanceSocket(Waitable, asyncio.Protocol):
    """The client end of one WebSocket connection to an instance (websockets' sans-I/O protocol).

    Messages arrive whole (fragments joined) through `recv`, which returns None once the instance
    side is over; `ending` then says how, as the close code and reason for the client. Reading
    pauses while more than `_HIGH_WATER` bytes of messages wait to be taken.
    """

    def __init__(self, uri: WebSocketURI, subprotocols: list[str], max_size: int | None) -> None:
        self.ws = ClientProtocol(uri, subprotocols=subprotocols or None, max_size=max_size)  # type: ignore[arg-type]
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self._messages: deque[str | bytes] = deque()
        self._queued = 0
        self._parts: list[bytes] = []
        self._text = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._close_timer: asyncio.TimerHandle | None = None

    # -- used by the relay -------------------------------------------------------------------

    def start(self, headers: list[tuple[str, str]]) -> None:
        """Send the upgrade request, with `headers` besides the WebSocket ones."""
        request = self.ws.connect()
        for name, value in headers:
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    async def handshake(self) -> None:
        """Wait for the instance's answer to the upgrade: `response`, and `ws.state` OPEN if accepted."""
        while self.response is None and not self.lost:
            await self._wait()

    async def recv(self) -> str | bytes | None:
        while not self._messages:
            if self.lost or self.ws.state is not State.OPEN:
                return None
            await self._wait()
        message = self._messages.popleft()
        self._queued -= len(message)
        if self._read_paused and self._queued <= _LOW_WATER and not self.lost:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return message

    async def send(self, message: str | bytes) -> bool:
        """Send one message; False if the session with the instance is over."""
        ws = self.ws
        if ws.state is not State.OPEN or self.lost:
            return False
        if isinstance(message, str):
            ws.send_text(message.encode())
        else:
            ws.send_binary(message)
        self._flush()
        if self._write_paused and not self.lost:
            self._drain = self._loop.create_future()
            await self._drain
        return True

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (the instance is expected to close the connection)."""
        if self.ws.state is State.OPEN and not self.lost:
            self.ws.send_close(code, reason)
            self._flush()
            self._expect_close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def ending(self) -> tuple[int, str]:
        """How the instance side ended, as the close code and reason to give the client."""
        rcvd = self.ws.close_rcvd
        if rcvd is not None:
            return sendable(rcvd.code, vanished=1011), rcvd.reason
        sent = self.ws.close_sent  # our side failed the connection (protocol error, message too big)
        detail = f"{sent.code} {sent.reason}".strip() if sent is not None else "closed without a close frame"
        return 1011, close_reason(PlatformError(E.GW_WS_INSTANCE_LOST, detail=detail))

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        self._flush()  # pongs, the close reply
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            else:
                self.response = event
        if ws.close_expected():
            self._expect_close()
        self._wake()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        for event in self.ws.events_received():
            if isinstance(event, Response):  # a refusal whose body ran to the end of the connection
                self.response = event
        self._flush()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent: the protocol state becomes CLOSED
        self.lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- internals ---------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if frame.fin:
                self._push(frame.data)
            else:
                self._parts = [frame.data]  # type: ignore[list-item]
        elif opcode is Opcode.CONT:
            self._parts.append(frame.data)  # type: ignore[arg-type]
            if frame.fin:
                data, self._parts = b"".join(self._parts), []
                self._push(data)
        # PING, PONG, CLOSE: the protocol has answered them already.

    def _push(self, data: Any) -> None:
        if self._text:
            try:
                message: str | bytes = bytes(data).decode()
            except UnicodeDecodeError:
                self.ws.fail(1007, "invalid UTF-8 in a text message")
                self._flush()
                self._expect_close()
                return
        else:
            message = data if type(data) is bytes else bytes(data)
        self._messages.append(message)
        self._queued += len(message)
        if self._queued > _HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _flush(self) -> None:
        transport = self.transport
        for data in self.ws.data_to_send():
            if self.lost or transport is None:
                return
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                with contextlib.suppress(Exception):
                    transport.write_eof()
            else:
                transport.close()

    def _expect_close(self) -> None:
        if self._close_timer is None and not self.lost:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self.abort)


async def open_instance(
    host: str,
    port: int,
    path: bytes,
    headers: list[tuple[str, str]],
    subprotocols: list[str],
    *,
    timeout: float,
    max_size: int | None = INSTANCE_MAX_MESSAGE,
) -> InstanceSocket:
    """Connect to an instance and send the upgrade; returns once it answered (accepted or not).

    Raises `UpstreamError` (with `connected` False when no connection could be made) or, past
    `timeout`, `TimeoutError`.
    """
    loop = asyncio.get_running_loop()
    resource, _, query = path.decode("latin-1").partition("?")
    uri = WebSocketURI(False, host, port, resource, query)
    sock: InstanceSocket | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                _, sock = await loop.create_connection(lambda: InstanceSocket(uri, subprotocols, max_size), host, port)
            except OSError as exc:
                raise UpstreamError(f"cannot connect to {host}:{port} ({exc})", connected=False) from None
            sock.start(headers)
            await sock.handshake()
    except BaseException:
        if sock is not None:
            sock.abort()
        raise
    if sock.response is None:
        raise UpstreamError("connection closed by the instance during the upgrade")
    if sock.ws.state is not State.OPEN and not isinstance(sock.ws.handshake_exc, InvalidStatus):
        sock.abort()
        raise UpstreamError(f"bad upgrade answer from the instance ({sock.ws.handshake_exc})", responded=True)
    return sock


def relayed_refusal(response: Response, request_id: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of an instance's refusal as the client gets them."""
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.raw_items()
        if name.lower() not in _REFUSAL_DROPPED
    ]
    headers.append((b"x-request-id", request_id))
    return headers


class Relay:
    """One accepted session: messages pumped both ways until either side ends, then the other closed.

    `run` pumps client → instance on the calling task and instance → client on a task of its own.
    """

    def __init__(
        self,
        receive: Receive,
        send: Send,
        instance: InstanceSocket,
        stats: StreamMetrics,
        target: Target,
        *,
        max_message: int,
        rate: TokenBucket | None,
    ) -> None:
        self.receive = receive
        self.send = send
        self.instance = instance
        self.stats = stats
        self.target = target
        self.max_message = max_message
        self.rate = rate
        self.client_code: int | None = None  # the close code the client got (or sent)
        self._client_gone = False

    async def run(self) -> int:
        down = asyncio.get_running_loop().create_task(self._to_client())
        try:
            await self._to_instance()
            # The instance has the close (or is gone); let its side finish, within the close timeout.
            await asyncio.wait_for(asyncio.shield(down), CLOSE_TIMEOUT_S + 1)
        except TimeoutError:
            self.instance.abort()
            down.cancel()
        except BaseException:
            self.instance.abort()
            down.cancel()
            raise
        return self.client_code or 1006

    async def shutdown(self, reason: str) -> None:
        """The gateway is stopping: close both sides with 1001."""
        self.instance.close(1001, reason)
        await self._close_client(1001, reason)

    async def _to_instance(self) -> None:
        receive, instance, stats = self.receive, self.instance, self.stats
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if len(data) > self.max_message:
                    await self._end(1009, PlatformError(E.GW_WS_MESSAGE_TOO_LARGE, limit=self.max_message))
                    return
                if self.rate is not None and self.rate.take(time.monotonic()):
                    await self._end(1008, PlatformError(E.GW_WS_RATE_LIMITED, rate=self.rate.rate))
                    return
                stats.ws_in += 1
                if not await instance.send(data):
                    return  # the instance side is over: `_to_client` closes the client
            elif kind == "websocket.disconnect":
                code = message.get("code", 1005)
                if self.client_code is None:
                    self.client_code = code
                    self._client_gone = True
                instance.close(sendable(code, vanished=1001), message.get("reason") or "")
                return

    async def _to_client(self) -> None:
        instance, send, stats = self.instance, self.send, self.stats
        try:
            while (message := await instance.recv()) is not None:
                if type(message) is str:
                    await send({"type": "websocket.send", "text": message})
                else:
                    await send({"type": "websocket.send", "bytes": message})
                stats.ws_out += 1
        except OSError:  # uvicorn's ClientDisconnected: the client is gone
            self._client_gone = True
            instance.close(1001, "")
            return
        await self._close_client(*instance.ending())

    async def _end(self, code: int, err: PlatformError) -> None:
        reason = close_reason(err)
        self.instance.close(code, reason)
        await self._close_client(code, reason)

    async def _close_client(self, code: int, reason: str) -> None:
        if self.client_code is not None or self._client_gone:
            return
        self.client_code = code
        with contextlib.suppress(OSError, RuntimeError):
            await self.send({"type": "websocket.close", "code": code, "reason": reason})


class Sessions:
    """The gateway's WebSocket sessions: instance choice (one retry elsewhere), the relay, shutdown."""

    def __init__(
        self, balancer: Balancer, *, message_rate: float | None = None, message_burst: int | None = None
    ) -> None:
        self._balancer = balancer
        self.message_rate = message_rate
        self.message_burst = message_burst
        self.live: set[Relay] = set()

    async def open(self, ex: Any, plan: ServicePlan, *, timeout: float, max_message: int) -> Relay | None:
        """Pick an instance for the upgrade `ex` (app.py's exchange, past admission), open a session
        with it and accept the client's upgrade: the relay to `run`. None when there is nothing to
        run: the instance refused (its answer was relayed) or the client left. Raises `PlatformError`
        before anything was sent to the client."""
        balancer = self._balancer
        target = balancer.pick(plan)
        if target is None:
            raise PlatformError(E.GW_NO_INSTANCE, service_id=ex.service_id)
        balancer.enter(target)
        ex.target = target
        try:
            instance = await self._connect(ex, plan, timeout)
            if instance.ws.state is not State.OPEN:
                response = instance.response
                assert response is not None
                instance.abort()
                ex.status = response.status_code
                headers = relayed_refusal(response, ex.request_id)
                await refuse(ex.send, ex.scope, response.status_code, headers, bytes(response.body))
                balancer.leave(ex.target)
                return None
            relay = await self._accept(ex, instance, max_message)
        except BaseException:
            balancer.leave(ex.target)
            raise
        if relay is None:
            balancer.leave(ex.target)
        return relay

    async def run(self, relay: Relay) -> None:
        """Relay an accepted session to its end."""
        stats = relay.stats
        stats.ws_open += 1
        self.live.add(relay)
        started = time.monotonic()
        try:
            await relay.run()
        finally:
            self.live.discard(relay)
            self._balancer.leave(relay.target)
            stats.ws_open -= 1
            stats.session_ended(time.monotonic() - started, relay.client_code or 1006)

    async def aclose(self) -> None:
        reason = close_reason(PlatformError(E.GW_STOPPING))
        for relay in list(self.live):
            await relay.shutdown(reason)

    async def _connect(self, ex: Any, plan: ServicePlan, timeout: float) -> InstanceSocket:
        headers = _forwarded(ex.fwd)
        subprotocols = list(ex.scope.get("subprotocols") or ())
        retried = False
        while True:
            target = ex.target
            host, port = target.key
            try:
                return await open_instance(host, port, ex.upstream_path, headers, subprotocols, timeout=timeout)
            except TimeoutError:
                raise PlatformError(E.GW_TIMEOUT, timeout=f"{timeout:g}") from None
            except UpstreamError as exc:
                other = None
                if not exc.connected and not retried:
                    self._balancer.suspect(target.instance_id)
                    other = self._balancer.pick(plan, exclude=target.instance_id)
                if other is None:
                    raise PlatformError(E.GW_UPSTREAM_FAILED, detail=exc.detail) from None
                retried = True
                self._balancer.leave(target)
                self._balancer.enter(other)
                ex.target = other

    async def _accept(self, ex: Any, instance: InstanceSocket, max_message: int) -> Relay | None:
        target = ex.target
        accept: Message = {
            "type": "websocket.accept",
            "headers": [
                (b"x-request-id", ex.request_id),
                (b"x-modelport-version", target.version_b),
                (b"x-modelport-instance", target.instance_b),
            ],
        }
        if instance.ws.subprotocol:
            accept["subprotocol"] = instance.ws.subprotocol
        try:
            await ex.send(accept)
        except OSError:  # the client left during the handshake
            instance.close(1001, "")
            return None
        ex.status = 101
        rate = None
        if self.message_rate:
            burst = self.message_burst or max(1, math.ceil(self.message_rate))
            rate = TokenBucket(self.message_rate, burst, time.monotonic())
        stats = streams_of(ex.service_id)
        return Relay(ex.receive, ex.send, instance, stats, target, max_message=max_message, rate=rate)


def _forwarded(fwd: list[bytes]) -> list[tuple[str, str]]:
    """The request headers app.py forwards (raw `name: value` lines), minus the client's handshake ones."""
    headers = []
    for line in b"".join(fwd).split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        if sep and not name.startswith(b"sec-websocket-"):
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the gateway's framing: messages over `FRAGMENT_BYTES` go out
    as fragments of at most that size, and a gateway shutdown closes sessions with 1001 (going away)
    rather than uvicorn's 1012. Serve the gateway with `uvicorn.Config(..., ws=GatewayWebSocketProtocol)`
    (under another WebSocket implementation everything works, with messages sent unfragmented).
    """

    async def send(self, message: Message) -> None:
        if (
            message["type"] == "websocket.send"
            and self.handshake_complete
            and not self.close_sent
            and self.initial_response is None
        ):
            data = message.get("bytes")
            text = data is None
            if text:
                chars = message.get("text") or ""
                # Only a text that may be over the limit is encoded here (UTF-8: up to 4 bytes a character).
                data = chars.encode() if len(chars) > FRAGMENT_BYTES // 4 else None
            if data is not None and len(data) > FRAGMENT_BYTES:
                await self.writable.wait()
                if self.disconnected:
                    raise ClientDisconnected()
                try:
                    self._send_fragments(data, text)
                except InvalidState:
                    raise ClientDisconnected() from None
                return
        await super().send(message)  # type: ignore[arg-type]
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A refusal completes the handshake too: without this uvicorn logs an error for every
            # refusal sent with the `websocket.http.response` extension (Kludex/uvicorn PR 3138).
            self.handshake_complete = True

    def _send_fragments(self, data: bytes, text: bool) -> None:
        conn = self.conn
        view = memoryview(data)
        size = len(data)
        first = bytes(view[:FRAGMENT_BYTES])
        if text:
            conn.send_text(first, fin=False)
        else:
            conn.send_binary(first, fin=False)
        for start in range(FRAGMENT_BYTES, size, FRAGMENT_BYTES):
            end = start + FRAGMENT_BYTES
            conn.send_continuation(bytes(view[start:end]), fin=end >= size)
        self.transport.write(b"".join(conn.data_to_send()))

    def shutdown(self) -> None:
        if not (self.handshake_complete and not self.close_sent and not self.disconnected):
            super().shutdown()
            return
        self.stop_keepalive()
        reason = close_reason(PlatformError(E.GW_STOPPING))
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001, "reason": reason})
        self.conn.send_close(1001, reason)
        self.close_sent = True
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
