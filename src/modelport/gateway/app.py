"""The gateway: an ASGI app serving `/v1/infers/{service_id}[/path]` by proxying to model instances.

A request passes these steps, each small and in this order:
read the head (service id, upstream path, request id, headers to forward) → find the service's
plan in the pushed route table → authenticate and authorise (`auth.py`; an unknown service is
"not found" only to a caller with a valid credential) → reject an oversized
declared body → check the service serves → read the body up to the replay limit → pick an
instance (`balance.py`) → send the request and get the response head (`upstream.py`, one retry
on another instance when the connection failed before any response byte) → relay the response
as it arrives. Platform errors become catalog JSON bodies (`responses.py`); whatever the model
answers passes through untouched apart from hop-by-hop headers and the headers we add.

Streams: an event stream (SSE, JSON lines) is relayed piece by piece as the instance writes it;
once its head went out, the timeout bounds each silence (`stream_idle_timeout_s`), not the
stream. A prefix-affinity (LLM) service has its body held up to `prefix.MAX_BODY` to route by
prompt. A WebSocket upgrade takes the head, auth and admission steps, then `websocket.py` relays it.

Nothing here touches the store: routes arrive through `set_routes`, counters leave through
`take_stats` and the Prometheus series in `metrics.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from random import getrandbits
from typing import Any

from modelport.auth.snapshot import AuthSnapshot
from modelport.auth.tokens import TokenService
from modelport.errors import E, PlatformError
from modelport.gateway import metrics, prefix, websocket
from modelport.gateway.auth import AppCodeAuth, Authentication, Pending, SignatureAuth, SnapshotRef, TokenAuth
from modelport.gateway.balance import Balancer, ServicePlan, Target
from modelport.gateway.ratelimit import Limiter, burst_for
from modelport.gateway.responses import send_error
from modelport.gateway.routes import RouteTable
from modelport.gateway.upstream import Connection, Pool, UpstreamError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("modelport.gateway")

_PREFIX = b"/v1/infers/"
# Bodies up to this size are held in memory so a failed attempt can be replayed elsewhere;
# a bigger body streams through and is not retried once any of it was sent.
REPLAY_LIMIT = 64 * 1024
# After this long without an answer, watch the client too, to drop the upstream exchange if
# the client goes away (not done for every request: it costs a task).
_WATCH_CLIENT_AFTER_S = 0.2
# How often in-flight requests are checked for their deadline and for client watching. One
# sweep for all requests is cheaper than a timer per request; timeouts fire up to this late.
_SWEEP_S = 0.1
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")

# Request headers handled by the gateway rather than copied upstream: hop-by-hop ones (RFC 9110
# §7.6.1), framing (we set it for the upstream leg) and those we set ourselves.
_REQUEST_HANDLED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
        b"content-length",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    }
)
# Response headers not relayed: hop-by-hop and framing (the server redoes framing for the client),
# and date/server, which the serving uvicorn adds itself (a second copy would be invalid).
_RESPONSE_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-request-id",
        b"date",
        b"server",
    }
)
_PROTO_HTTP = b"x-forwarded-proto: http\r\n"
_PROTO_HTTPS = b"x-forwarded-proto: https\r\n"
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}


class _ClientGone(Exception):
    """The client disconnected; nothing more can be sent to it."""


class _Exchange:
    """Per-request state shared by the steps."""

    __slots__ = (
        "affinity",
        "begun",
        "client_gone",
        "conn",
        "content_length",
        "creds",
        "deadline",
        "error",
        "finished",
        "fwd",
        "idle_from",
        "idle_timeout",
        "method",
        "pending",
        "pump",
        "pump_error",
        "receive",
        "received",
        "request_id",
        "responded",
        "scope",
        "send",
        "sent",
        "service_id",
        "status",
        "target",
        "task",
        "timed_out",
        "timeout",
        "upstream_path",
        "watcher",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.service_id = ""
        self.upstream_path = b"/"
        self.method = b"GET"
        self.request_id = b""
        self.fwd: list[bytes] = []
        self.creds: dict[bytes, bytes] = {}
        self.pending: Pending | None = None  # a signature over the body, finished once the body is read
        self.content_length: int | None = None
        self.received = 0
        self.target: Target | None = None
        self.conn: Connection | None = None
        self.status = 0
        self.error: PlatformError | None = None
        self.responded = False
        self.client_gone = False
        self.finished = False
        self.sent = False  # the whole request went upstream: the client's channel is free to watch
        self.watcher: asyncio.Task[Message] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.timeout = 0.0
        self.begun = 0.0
        self.deadline = 0.0  # loop time by which the response head must have arrived
        self.idle_from = 0.0  # loop time of the last response bytes relayed (then: idle timeout)
        self.idle_timeout = 0.0
        self.affinity: list[bytes] | None = None  # the prompt's hash chain (prefix-affinity services)
        self.timed_out = False
        self.pump: asyncio.Task[None] | None = None  # streams a big request body upstream
        self.pump_error: PlatformError | _ClientGone | None = None


class Gateway:
    """The data plane's ASGI app. See the module docstring for the steps of a request."""

    def __init__(
        self,
        tokens: TokenService,
        *,
        max_body_bytes: int = 12 * 1024 * 1024,
        timeout_s: float = 40.0,
        limiter: Limiter | None = None,
        qps_limit: int | None = None,
        qps_burst_fraction: float = 0.1,
        ws_message_rate: float | None = None,
        ws_message_burst: int | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        # -- auth and limits (gateway/auth.py, gateway/ratelimit.py) --
        # Without a limiter (bare gateway in tests/benchmarks) there is no QPS limit; the platform
        # passes one with the default limit, which a service's `qps_limit` overrides.
        self._limiter = limiter
        self.qps_limit = qps_limit
        self.qps_burst_fraction = qps_burst_fraction
        self._snapshot = SnapshotRef()
        self._auth = Authentication(
            [TokenAuth(tokens, self._snapshot), AppCodeAuth(self._snapshot), SignatureAuth(self._snapshot)]
        )
        # -- end auth and limits --
        # header name -> True: credential to capture (and drop if secret); False: drop/handle
        self._special: dict[bytes, bool] = dict.fromkeys(_REQUEST_HANDLED, False)
        self._special.update(dict.fromkeys(self._auth.headers, True))
        self._forward_creds = self._auth.headers - self._auth.secret_headers
        self._balancer = Balancer()
        self._pool = Pool()
        # WebSocket sessions; `ws_message_rate`: client messages/s a session may send (None: no limit),
        # in bursts of `ws_message_burst` (default: one second's worth).
        self._sessions = websocket.Sessions(
            self._balancer, message_rate=ws_message_rate, message_burst=ws_message_burst
        )
        self._stats: dict[str, list[int]] = {}
        # Request ids: a random per-gateway prefix and a counter (unique, and cheaper than
        # 16 random bytes per request).
        self._id_prefix = b"%016x" % getrandbits(64)
        self._id_counter = itertools.count(getrandbits(32))
        self._active: set[_Exchange] = set()  # requests under a deadline
        self._sweeper: asyncio.TimerHandle | None = None

    # -- control side ------------------------------------------------------------------------

    def set_auth(self, snapshot: AuthSnapshot, *_: object) -> None:
        """Swap in a new auth snapshot (keys, apps, bindings, roles); requests see the old or the new one."""
        self._snapshot.current = snapshot

    def set_routes(self, table: RouteTable) -> None:
        """Swap in a new route table (atomic: requests see the old or the new one, whole)."""
        self._balancer.update(table)
        self._pool.retain(self._balancer.keys())

    def endpoint_down(self, instance_id: str) -> None:
        """Stop routing to an instance at once, until a table arrives that no longer lists it."""
        keys = self._balancer.keys_of(instance_id)
        self._balancer.mark_down(instance_id)
        for key in keys:
            self._pool.drop(key)

    def inflight(self, instance_id: str) -> int:
        return self._balancer.load.get(instance_id, 0)

    def take_stats(self) -> dict[str, tuple[int, int]]:
        """service_id -> (invocations, failures) since the previous call."""
        stats, self._stats = self._stats, {}
        return {sid: (inv, fail) for sid, (inv, fail) in stats.items()}

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self._sessions.aclose()
        await self._pool.aclose()

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._not_http(scope, receive, send)
            return
        started = time.perf_counter()
        ex = _Exchange(scope, receive, send)
        plan: ServicePlan | None = None
        try:
            self._read_head(ex)
            plan = self._balancer.plans.get(ex.service_id)
            ex.pending = self._auth.check(ex.creds, plan.route if plan is not None else None, scope)
            if plan is None:
                raise PlatformError(E.GW_SERVICE_NOT_FOUND, service_id=ex.service_id)
            self._check_declared_size(ex, plan)
            if not plan.serving:
                raise PlatformError(E.GW_NOT_RUNNING, service_id=ex.service_id, status=plan.route.status)
            await self._proxy(ex, plan)
        except PlatformError as err:
            await self._fail(ex, err)
        except Exception as exc:
            # A bug of ours: still answer in the platform's format, with the id to find the log.
            log.exception("request %s: gateway error", ex.request_id.decode() or "-")
            if ex.conn is not None:
                ex.conn.abort("gateway error")
            await self._fail(
                ex, PlatformError(E.INTERNAL, detail=type(exc).__name__, request_id=ex.request_id.decode())
            )
        finally:
            self._finish(ex)
            self._record(ex, plan, time.perf_counter() - started)

    async def _fail(self, ex: _Exchange, err: PlatformError) -> None:
        ex.error = err
        ex.status = err.status
        self._stop_timer(ex)
        if not ex.responded and not ex.client_gone:
            ex.responded = True
            await send_error(ex.send, err, ex.request_id)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # -- steps -----------------------------------------------------------------------------------

    def _read_head(self, ex: _Exchange) -> None:
        """Request id, service id, upstream path, credentials and the headers to forward."""
        scope = ex.scope
        special = self._special
        fwd = ex.fwd
        request_id = host = xff = connection = None
        content_length = None
        for name, value in scope["headers"]:
            kind = special.get(name)
            if kind is None:
                fwd += (name, b": ", value, b"\r\n")
            elif kind:
                ex.creds[name] = value
                if name in self._forward_creds:
                    fwd += (name, b": ", value, b"\r\n")
            elif name == b"x-request-id":
                request_id = value
            elif name == b"content-length":
                content_length = value
            elif name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                xff = value
            elif name == b"connection":
                connection = value
        if connection is not None and connection not in (b"keep-alive", b"close"):
            _drop_connection_listed(fwd, connection)
        if request_id is None or not _SANE_REQUEST_ID.fullmatch(request_id):
            request_id = b"%b%016x" % (self._id_prefix, next(self._id_counter))
        ex.request_id = request_id
        client = scope.get("client")
        if client:
            ip = client[0].encode()
            fwd += (b"x-forwarded-for: ", xff + b", " + ip if xff else ip, b"\r\n")
        if host:
            fwd += (b"x-forwarded-host: ", host, b"\r\n")
        fwd += (_PROTO_HTTPS if scope.get("scheme") == "https" else _PROTO_HTTP, b"x-request-id: ", request_id, b"\r\n")
        if content_length is not None:
            try:
                ex.content_length = int(content_length)
            except ValueError:
                raise PlatformError(E.INVALID_ARGUMENT, detail="bad Content-Length") from None
        method = scope["method"]
        ex.method = _METHODS.get(method) or method.encode()

        raw = scope.get("raw_path") or (scope.get("root_path", "") + scope["path"]).encode()
        if not raw.startswith(_PREFIX):
            raise PlatformError(E.GW_NO_SERVICE_ID)
        sid, slash, rest = raw[len(_PREFIX) :].partition(b"/")
        if not sid:
            raise PlatformError(E.GW_NO_SERVICE_ID)
        ex.service_id = sid.decode("latin-1")
        path = slash + rest if slash else b"/"
        query = scope.get("query_string")
        ex.upstream_path = path + b"?" + query if query else path

    def _check_declared_size(self, ex: _Exchange, plan: ServicePlan) -> None:
        limit = plan.route.max_body_bytes or self.max_body_bytes
        if ex.content_length is not None and ex.content_length > limit:
            raise PlatformError(E.GW_BODY_TOO_LARGE, limit=limit)

    async def _proxy(self, ex: _Exchange, plan: ServicePlan) -> None:
        route = plan.route
        limit = route.max_body_bytes or self.max_body_bytes
        self._start_timer(ex, route.timeout_s or self.timeout_s)
        ex.idle_timeout = route.stream_idle_timeout_s or ex.timeout
        sm = metrics.for_service(ex.service_id)
        sm.inflight += 1
        try:
            whole = ex.pending is not None and ex.pending.needs_body
            hold = prefix.MAX_BODY if plan.affinity is not None else REPLAY_LIMIT
            body, more = await self._read_body_prefix(ex, limit, whole=whole, hold=hold)
            if plan.affinity is not None and not more:
                ex.affinity = prefix.prompt_chain(ex.upstream_path, body)
            await self._admit(ex, plan, body)
            await self._exchange(ex, plan, body, more, limit)
            await self._relay(ex)
        except asyncio.CancelledError:
            if not ex.timed_out:
                raise
            ex.task.uncancel()  # type: ignore[union-attr]
            if not ex.responded:
                raise PlatformError(E.GW_TIMEOUT, timeout=f"{ex.timeout:g}") from None
            # else: a stream stalled after its head went out: it is cut
        except _ClientGone:
            ex.client_gone = True
        except UpstreamError as exc:
            if ex.client_gone:
                return
            if ex.responded:
                log.warning("request %s: instance failed mid-response: %s", ex.request_id.decode(), exc)
                return
            raise PlatformError(E.GW_UPSTREAM_FAILED, detail=exc.detail) from None
        finally:
            sm.inflight -= 1

    async def _admit(self, ex: _Exchange, plan: ServicePlan, body: bytes) -> None:
        """Finish a signature check with the body it covers, then take a QPS token (429 if none)."""
        if ex.pending is not None:
            ex.pending.finish(hashlib.sha256(body).hexdigest() if ex.pending.needs_body else "")
        limiter = self._limiter
        rate = plan.route.qps_limit or self.qps_limit
        if limiter is None or not rate:
            return
        wait = await limiter.take(ex.service_id, rate, burst_for(rate, self.qps_burst_fraction))
        if wait:
            raise PlatformError(
                E.GW_THROTTLED, service_id=ex.service_id, limit=rate, retry_after=max(1, math.ceil(wait))
            )

    async def _read_body_prefix(
        self, ex: _Exchange, limit: int, whole: bool = False, hold: int = REPLAY_LIMIT
    ) -> tuple[bytes, bool]:
        """The body if it is at most `hold` bytes, else its first part; and whether more follows.

        With `whole` (a signed body, to hash before anything is forwarded) all of it, up to `limit`.
        """
        message = await ex.receive()
        if message["type"] != "http.request":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        received = len(body)
        if more:
            parts = [body]
            while more and (whole or received <= hold):
                message = await ex.receive()
                if message["type"] != "http.request":
                    raise _ClientGone
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                parts.append(chunk)
                received += len(chunk)
                if received > limit:
                    break
            body = b"".join(parts)
        ex.received = received
        if received > limit:
            raise PlatformError(E.GW_BODY_TOO_LARGE, limit=limit)
        return body, more

    async def _exchange(self, ex: _Exchange, plan: ServicePlan, body: bytes, more: bool, limit: int) -> None:
        """Send the request and wait for the response head, retrying where it is safe.

        A reused keep-alive connection that fails before any response byte was probably closed
        by the instance meanwhile: try again on a fresh one, same instance. A failure to connect,
        or on a fresh connection before any response byte, gets ONE retry on another instance,
        provided the body can be replayed (or none of it was sent yet).
        """
        balancer = self._balancer
        target = balancer.pick(plan, chain=ex.affinity)
        if target is None:
            raise PlatformError(E.GW_NO_INSTANCE, service_id=ex.service_id)
        balancer.enter(target)
        ex.target = target
        retried_elsewhere = False
        fresh = more  # a streamed body must not meet a stale connection: it cannot be replayed
        while True:
            try:
                pool = self._pool
                conn = (None if fresh else pool.take(target.key)) or await pool.connect(target.key)
                ex.conn = conn
                self._send_request(ex, conn, target, body, more, limit)
                await conn.head()
                return
            except UpstreamError as exc:
                if ex.pump_error is not None:
                    raise ex.pump_error from None
                failed = ex.conn
                ex.conn = None
                if failed is not None:
                    failed.abort()
                if ex.client_gone or exc.responded or ex.pump is not None:
                    raise  # the body (or part of it) is gone, or the instance did answer
                if failed is not None and failed.reused:
                    fresh = True
                    continue
                balancer.suspect(target.instance_id)
                other = None if retried_elsewhere else balancer.pick(plan, target.instance_id, ex.affinity)
                if other is None:
                    raise
                log.info("request %s: retry on %s: %s", ex.request_id.decode(), other.instance_id, exc)
                retried_elsewhere = True
                balancer.leave(target)
                balancer.enter(other)
                ex.target = target = other
                fresh = more

    def _send_request(
        self, ex: _Exchange, conn: Connection, target: Target, body: bytes, more: bool, limit: int
    ) -> None:
        """Write the request; a body bigger than the replay limit streams on in a pump task."""
        head = [ex.method, b" ", ex.upstream_path, b" HTTP/1.1\r\nhost: ", target.authority, b"\r\n"]
        head += ex.fwd
        conn.start(head_only=ex.method == b"HEAD")
        if not more:
            if body or ex.content_length is not None or ex.method in (b"POST", b"PUT", b"PATCH"):
                head.append(b"content-length: %d\r\n\r\n" % len(body))
                head.append(body)
            else:
                head.append(b"\r\n")
            conn.write(b"".join(head))
            ex.sent = True
            return
        chunked = ex.content_length is None
        if chunked:
            head.append(b"transfer-encoding: chunked\r\n\r\n")
            head += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            head += (b"content-length: %d\r\n\r\n" % ex.content_length, body)
        conn.write(b"".join(head))
        # Full duplex: the instance may answer (or stream its answer) before the upload ends.
        ex.pump = asyncio.get_running_loop().create_task(self._pump_body(ex, conn, limit, chunked))

    async def _pump_body(self, ex: _Exchange, conn: Connection, limit: int, chunked: bool) -> None:
        """Copy the rest of the client's body to the instance, with back-pressure both ways."""
        try:
            more = True
            while more:
                if conn.write_paused:
                    await conn.drain()
                message = await ex.receive()
                if message["type"] != "http.request":
                    raise _ClientGone
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                ex.received += len(chunk)
                if ex.received > limit:
                    raise PlatformError(E.GW_BODY_TOO_LARGE, limit=limit)
                if chunk:
                    conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                conn.write(b"0\r\n\r\n")
        except UpstreamError:
            return  # the exchange itself sees the connection fail
        except (PlatformError, _ClientGone) as exc:
            ex.pump_error = exc
            if isinstance(exc, _ClientGone):
                ex.client_gone = True
            conn.abort(str(exc) or "client disconnected")
            return
        ex.sent = True

    async def _relay(self, ex: _Exchange) -> None:
        """Send the response head, then body pieces as they arrive from the instance."""
        conn = ex.conn
        target = ex.target
        assert conn is not None and target is not None
        headers = [(n, v) for n, v in conn.headers if n not in _RESPONSE_DROPPED]
        headers += (
            (b"x-request-id", ex.request_id),
            (b"x-modelport-version", target.version_b),
            (b"x-modelport-instance", target.instance_b),
        )
        ex.status = conn.status
        send = ex.send
        await send({"type": "http.response.start", "status": conn.status, "headers": headers})
        ex.responded = True
        if conn.complete:
            await send({"type": "http.response.body", "body": conn.take_body(), "more_body": False})
            return
        separator = _event_separator(conn.headers)
        if separator is not None:
            await self._relay_stream(ex, conn, separator)
            return
        loop_time = asyncio.get_running_loop().time
        while True:
            ex.idle_from = loop_time()
            chunk, done = await conn.read_body()
            await send({"type": "http.response.body", "body": chunk, "more_body": not done})
            if done:
                return

    # -- event streams and WebSocket (issue 7) ---------------------------------------------------

    async def _relay_stream(self, ex: _Exchange, conn: Connection, separator: bytes) -> None:
        """Relay an event stream piece by piece as the instance writes it (one send each: no
        buffering), counting its events (SSE messages, keep-alive comments included; JSON lines)."""
        send = ex.send
        loop_time = asyncio.get_running_loop().time
        events = 0
        straddle = separator[:1]  # a separator split over two pieces ends one and starts the next
        ended_half = False
        try:
            while True:
                ex.idle_from = loop_time()
                chunk, done = await conn.read_body()
                await send({"type": "http.response.body", "body": chunk, "more_body": not done})
                events += chunk.count(separator)
                if len(separator) > 1:
                    events += ended_half and chunk[:1] == straddle
                    ended_half = chunk[-1:] == straddle
                if done:
                    return
        finally:
            metrics.streams_of(ex.service_id).stream_ended(loop_time() - ex.begun, events)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An upgrade: the head, auth and admission steps of an HTTP request, then a relayed session.

        Admission runs on an empty body: a signed upgrade is verified, and the service's QPS limit
        counts handshakes (never messages: those have a per-session rate, `ws_message_rate`).
        """
        started = time.perf_counter()
        scope = websocket.as_request(scope)
        ex = _Exchange(scope, receive, send)
        plan: ServicePlan | None = None
        relay = None
        try:
            if (await receive())["type"] != "websocket.connect":
                return
            self._read_head(ex)
            plan = self._balancer.plans.get(ex.service_id)
            ex.pending = self._auth.check(ex.creds, plan.route if plan is not None else None, scope)
            if plan is None:
                raise PlatformError(E.GW_SERVICE_NOT_FOUND, service_id=ex.service_id)
            if not plan.serving:
                raise PlatformError(E.GW_NOT_RUNNING, service_id=ex.service_id, status=plan.route.status)
            if not plan.route.websocket:
                raise PlatformError(E.GW_NO_WEBSOCKET, service_id=ex.service_id)
            await self._admit(ex, plan, b"")
            route = plan.route
            relay = await self._sessions.open(
                ex,
                plan,
                timeout=route.timeout_s or self.timeout_s,
                max_message=route.max_body_bytes or self.max_body_bytes,
            )
        except PlatformError as err:
            ex.error, ex.status = err, err.status
            await websocket.refuse_with_error(send, scope, err, ex.request_id)
        finally:
            self._record(ex, plan, time.perf_counter() - started)  # the handshake
        if relay is not None:
            await self._sessions.run(relay)

    # -- timing and client watching --------------------------------------------------------------

    def _start_timer(self, ex: _Exchange, timeout: float) -> None:
        """Put the request under its deadline (and, after a while, have its client watched).

        Until the response head arrives the timeout bounds the whole request; after that it is an
        idle timeout, so a stream (SSE) lasts as long as it flows.
        """
        loop = asyncio.get_running_loop()
        ex.begun = now = loop.time()
        ex.task = asyncio.current_task()
        ex.timeout = timeout
        ex.deadline = now + timeout
        self._active.add(ex)
        if self._sweeper is None:
            self._sweeper = loop.call_at(now + _SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for ex in list(self._active):
            if ex.watcher is None and ex.sent and now - ex.begun >= _WATCH_CLIENT_AFTER_S:
                self._watch_client(ex)
            if now >= (ex.idle_from + ex.idle_timeout if ex.responded else ex.deadline):
                ex.timed_out = True
                self._active.discard(ex)
                ex.task.cancel()  # type: ignore[union-attr]
        self._sweeper = loop.call_at(now + _SWEEP_S, self._sweep) if self._active else None

    def _stop_timer(self, ex: _Exchange) -> None:
        self._active.discard(ex)

    def _watch_client(self, ex: _Exchange) -> None:
        """Notice a client that leaves during a long answer, and drop the upstream exchange."""
        task = asyncio.get_running_loop().create_task(ex.receive())
        task.add_done_callback(lambda t: self._client_message(ex, t))
        ex.watcher = task

    def _client_message(self, ex: _Exchange, task: asyncio.Task[Message]) -> None:
        if ex.finished or task.cancelled() or task.exception() is not None:
            return
        if task.result()["type"] == "http.disconnect":
            ex.client_gone = True
            if ex.conn is not None:
                ex.conn.abort("client disconnected")

    # -- bookkeeping -----------------------------------------------------------------------------

    def _finish(self, ex: _Exchange) -> None:
        ex.finished = True
        self._stop_timer(ex)
        if ex.watcher is not None:
            ex.watcher.cancel()
        pump_busy = ex.pump is not None and not ex.pump.done()
        if pump_busy:
            ex.pump.cancel()  # type: ignore[union-attr]
        conn = ex.conn
        if conn is not None:
            ex.conn = None
            if conn.complete and not ex.client_gone and not pump_busy:
                conn.release()
            else:
                conn.abort()  # cut mid-response: its remaining bytes would poison the next exchange
        if ex.target is not None:
            self._balancer.leave(ex.target)

    def _record(self, ex: _Exchange, plan: ServicePlan | None, seconds: float) -> None:
        err = ex.error
        status = 499 if ex.client_gone and not ex.responded else ex.status
        if plan is None:
            if err is not None:
                metrics.for_service(metrics.UNKNOWN_SERVICE).error(err.code)
                metrics.for_service(metrics.UNKNOWN_SERVICE).version("").count(status, seconds)
            return
        sm = metrics.for_service(ex.service_id)
        version = ex.target.model_version if ex.target is not None else ""
        sm.version(version).count(status, seconds)
        failed = err is not None or status >= 500
        if err is not None:
            sm.error(err.code)
        stats = self._stats.get(ex.service_id)
        if stats is None:
            stats = self._stats[ex.service_id] = [0, 0]
        stats[0] += 1
        if failed:
            stats[1] += 1


def _event_separator(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """What ends one event of an event-stream response (SSE, JSON lines); None for other responses."""
    for name, value in headers:
        if name == b"content-type":
            kind = value.partition(b";")[0].strip().lower()
            if kind == b"text/event-stream":
                return b"\n\n"
            if kind in (b"application/x-ndjson", b"application/jsonl"):
                return b"\n"
            return None
    return None


def _drop_connection_listed(fwd: list[bytes], value: bytes) -> None:
    """Remove headers that `Connection: a, b` declared hop-by-hop (rare: done the slow way)."""
    listed = {t.strip().lower() for t in value.split(b",")} - {b"keep-alive", b"close"}
    i = 0
    while i < len(fwd):
        if fwd[i] in listed:
            del fwd[i : i + 4]
        else:
            i += 4


def gateway_from_settings(tokens: TokenService, settings: Any, limiter: Limiter | None) -> Gateway:
    """The gateway as `modelport up` and `modelport gateway` configure it (`settings`: `Settings`)."""
    return Gateway(
        tokens,
        max_body_bytes=settings.max_body_bytes,
        timeout_s=settings.request_timeout_s,
        limiter=limiter,
        qps_limit=settings.qps_limit,
        qps_burst_fraction=settings.qps_burst_fraction,
        ws_message_rate=settings.ws_message_rate or None,
        ws_message_burst=settings.ws_message_burst or None,
    )
