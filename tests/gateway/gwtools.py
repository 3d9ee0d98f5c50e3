"""Gateway test kit: real upstream HTTP servers and a real uvicorn serving the Gateway, on 127.0.0.1.

Everything runs in the test's own (uvloop) event loop on free ports chosen by the kernel, and is
closed at the end of each test (see the `env` fixture in conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import Iterable
from types import MappingProxyType

import httpx
import uvicorn
from aiohttp import web

from modelport.auth.tokens import TokenService
from modelport.gateway.app import Gateway
from modelport.gateway.routes import Endpoint, RouteTable, ServiceRoute, VersionRoute
from modelport.gateway.websocket import GatewayWebSocketProtocol

PROJECT = "proj-a"
OTHER_PROJECT = "proj-b"


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Upstream:
    """A small model-like HTTP server. Every response says which upstream answered (`x-upstream`).

    Paths: `/slow?s=` sleeps, `/status/{code}` answers that status with a model-made body,
    `/stream?n=&gap=` sends n chunks `gap` seconds apart, `/echo-body` streams the request body
    back, anything else answers JSON describing the request it saw.
    """

    def __init__(self, name: str, *, keepalive_timeout: float = 75.0) -> None:
        self.name = name
        self.keepalive_timeout = keepalive_timeout
        self.requests: list[dict] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, "127.0.0.1", self.port)

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, keepalive_timeout=self.keepalive_timeout, access_log=None, shutdown_timeout=0.2
        )
        await self._runner.setup()
        sock = _bound_socket()
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        self.requests.append(seen)
        head = {"x-upstream": self.name}
        path = request.path
        if path == "/echo-body":
            return await self._echo_body(request, head)
        body = await request.read()
        seen["body_len"] = len(body)
        if path == "/slow":
            await asyncio.sleep(float(request.query.get("s", "1")))
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            head["x-model-header"] = "kept"
            return web.Response(status=code, body=b'{"erno": "MR.0105", "msg": "model says no"}', headers=head)
        elif path == "/stream":
            return await self._stream(request, head)
        seen["body_sha256"] = hashlib.sha256(body).hexdigest()
        return web.json_response(seen, headers=head)

    async def _stream(self, request: web.Request, head: dict) -> web.StreamResponse:
        n, gap = int(request.query.get("n", "5")), float(request.query.get("gap", "0.1"))
        resp = web.StreamResponse(headers={**head, "content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(f"data: {i}\n\n".encode())
            if i < n - 1:
                await asyncio.sleep(gap)
        await resp.write_eof()
        return resp

    async def _echo_body(self, request: web.Request, head: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**head, "content-type": "application/octet-stream"})
        if request.content_length is not None:
            resp.content_length = request.content_length
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


class GatewayServer:
    """The Gateway under a real uvicorn (httptools), as the platform serves it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> GatewayServer:
        sock = _bound_socket()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.gateway,
            http="httptools",
            ws=GatewayWebSocketProtocol,
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):
            if self._server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        raise AssertionError("gateway server did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
        await self.gateway.aclose()


def table(*services: ServiceRoute, revision: int = 1) -> RouteTable:
    return RouteTable(revision, MappingProxyType({s.service_id: s for s in services}))


def service(
    service_id: str,
    versions: Iterable[tuple[str, int, Iterable[Endpoint]]],
    *,
    status: str = "running",
    project_id: str = PROJECT,
    **extra: object,
) -> ServiceRoute:
    """A service route; `versions` are (model_version, weight, endpoints)."""
    return ServiceRoute(
        service_id=service_id,
        project_id=project_id,
        status=status,
        versions=tuple(
            VersionRoute(f"cfg-{v}", f"model-{v}", "m", v, weight, tuple(eps)) for v, weight, eps in versions
        ),
        **extra,  # type: ignore[arg-type]
    )


class Env:
    """What a gateway test gets: started upstreams, a served gateway, a client and a token."""

    def __init__(self) -> None:
        self.tokens = TokenService(os.urandom(32))
        self.token, _ = self.tokens.issue("u1", "alice", PROJECT)
        self.upstreams: list[Upstream | RacyUpstream] = []
        self.server: GatewayServer | None = None
        self.client: httpx.AsyncClient | None = None  # sends the token
        self.anon: httpx.AsyncClient | None = None  # sends no token

    @property
    def gateway(self) -> Gateway:
        assert self.server is not None
        return self.server.gateway

    async def upstream(self, name: str, **kw: float) -> Upstream:
        up = await Upstream(name, **kw).start()
        self.upstreams.append(up)
        return up

    async def racy_upstream(self, name: str) -> RacyUpstream:
        up = await RacyUpstream(name).start()
        self.upstreams.append(up)
        return up

    async def serve(self, routes: RouteTable, **gateway_kw: object) -> httpx.AsyncClient:
        gw = Gateway(self.tokens, **gateway_kw)  # type: ignore[arg-type]
        gw.set_routes(routes)
        self.server = await GatewayServer(gw).start()
        self.client = httpx.AsyncClient(base_url=self.server.url, headers={"X-Auth-Token": self.token}, timeout=30)
        self.anon = httpx.AsyncClient(base_url=self.server.url, timeout=30)
        return self.client

    async def close(self) -> None:
        for client in (self.client, self.anon):
            if client is not None:
                await client.aclose()
        if self.server is not None:
            await self.server.stop()
        for up in self.upstreams:
            await up.stop()


def error_of(resp: httpx.Response) -> str:
    """The platform error code of a response (asserting it is a platform error body)."""
    body = json.loads(resp.content)
    assert set(body) == {"error_code", "error_msg", "request_id"}, body
    assert body["request_id"] == resp.headers["x-request-id"]
    return body["error_code"]


def answered_by(resp: httpx.Response) -> str:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.headers["x-upstream"]


class RacyUpstream:
    """An instance that answers one request per connection with a keep-alive response, then closes
    the connection when the next request arrives on it, unanswered: the keep-alive race, every time.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.answered = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, "127.0.0.1", self.port)

    async def start(self) -> RacyUpstream:
        sock = _bound_socket()
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._read_request(reader)
            body = b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream: %b\r\n"
                b"content-length: %d\r\n\r\n%b" % (self.name.encode(), len(body), body)
            )
            await writer.drain()
            self.answered += 1
            await self._read_request(reader)
            self.dropped += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":", 1)[1]))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
