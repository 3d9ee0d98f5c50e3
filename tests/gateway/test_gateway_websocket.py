"""WebSocket through the gateway: auth on the upgrade, messages both ways, close codes, fragmentation,
refusals, limits. Instances are the real python runtime (examples/streaming) and, for what it cannot
do (any close code, vanishing mid-session), a small aiohttp WebSocket server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator

import pytest
import websockets
from aiohttp import WSMsgType, web
from gwtools import Env, _bound_socket, service, table
from prometheus_client import REGISTRY
from tests.runtime.runtime_support import EXAMPLES, Instance, launch_instance
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from modelport.gateway.ratelimit import LocalLimiter
from modelport.gateway.routes import Endpoint
from modelport.gateway.websocket import FRAGMENT_BYTES

MB = 1024 * 1024


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """examples/streaming: a text `{"prompt": ...}` is answered token by token, anything else echoed."""
    inst = launch_instance(
        EXAMPLES / "streaming", tmp_path_factory.mktemp("chat"), {"MODELPORT_WS_MAX_BYTES": "4000000"}
    )
    try:
        inst.wait_healthy()
        yield inst
    finally:
        inst.stop()


class WsUpstream:
    """An aiohttp WebSocket instance at `/ws`: echoes; `close:<code>` closes with that code;
    `vanish` drops the connection; `big:<n>` sends n bytes as one text message. Records how each
    session ended. Anything else than `/ws` refuses the upgrade with 418."""

    def __init__(self) -> None:
        self.closes: list[int | None] = []  # the close code of each session that ended
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> WsUpstream:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/{tail:.*}", self._refuse)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        sock = _bound_socket()
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=418, body=b"teapot: no upgrade here", headers={"x-model-header": "kept"})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",), max_msg_size=0, autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                text = msg.data
                if text.startswith("close:"):
                    await ws.close(code=int(text[6:]), message=b"upstream says bye")
                    break
                if text == "vanish":
                    request.transport.abort()  # type: ignore[union-attr]
                    break
                if text.startswith("big:"):
                    await ws.send_str("x" * int(text[4:]))
                    continue
                await ws.send_str(text)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.closes.append(ws.close_code)
        return ws


@pytest.fixture
async def ws_upstream() -> WsUpstream:
    up = await WsUpstream().start()
    yield up  # type: ignore[misc]
    await up.stop()


def _ws_url(env: Env, path: str) -> str:
    return env.server.url.replace("http://", "ws://") + path  # type: ignore[union-attr]


def _auth(env: Env) -> dict[str, str]:
    return {"X-Auth-Token": env.token}


async def _serve_chat(env: Env, chat: Instance, **gateway_kw: object) -> None:
    endpoint = Endpoint("i1", "127.0.0.1", chat.port)
    await env.serve(table(service("chat", [("v1", 100, [endpoint])], websocket=True)), **gateway_kw)


async def test_round_trip_text_binary_and_1mb_with_auth_on_the_upgrade(env: Env, chat: Instance) -> None:
    await _serve_chat(env, chat)
    url = _ws_url(env, "/v1/infers/chat/chat")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error_code"] == "ModelArts.0201"
    async with connect(url, additional_headers=_auth(env), max_size=4 * MB) as ws:
        assert ws.response.headers["x-modelport-instance"] == "i1"
        assert ws.response.headers["x-request-id"]
        assert env.gateway.inflight("i1") == 1  # a session counts as outstanding on its instance
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        await ws.send(json.dumps({"prompt": "one two", "max_tokens": 3, "interval": 0.01}))
        replies = [json.loads(await ws.recv()) for _ in range(4)]
        assert [r.get("token") for r in replies[:3]] == ["one", "two", "the"] and replies[3] == {"done": True}
        big = os.urandom(MB)
        await ws.send(big)
        assert await ws.recv() == big
        text = "é" * (MB // 2)  # 1 MB of UTF-8
        await ws.send(text)
        assert await ws.recv() == text
        await asyncio.wait_for(await ws.ping(), 5)  # the gateway answers pings
    await _until(lambda: env.gateway.inflight("i1") == 0)
    sample = REGISTRY.get_sample_value
    assert sample("modelport_gateway_websocket_sessions_total", {"service_id": "chat", "close_code": "1000"}) >= 1
    assert sample("modelport_gateway_websocket_messages_total", {"service_id": "chat", "direction": "in"}) >= 5
    assert sample("modelport_gateway_websocket_messages_total", {"service_id": "chat", "direction": "out"}) >= 8
    assert sample("modelport_gateway_websocket_open", {"service_id": "chat"}) == 0


async def test_close_codes_pass_both_ways(env: Env, chat: Instance, ws_upstream: WsUpstream) -> None:
    chat_ep = Endpoint("i1", "127.0.0.1", chat.port)
    up_ep = Endpoint("u1", "127.0.0.1", ws_upstream.port)
    routes = table(
        service("chat", [("v1", 100, [chat_ep])], websocket=True),
        service("raw", [("v1", 100, [up_ep])], websocket=True),
    )
    await env.serve(routes)
    # The instance closes: its code and reason reach the client.
    async with connect(_ws_url(env, "/v1/infers/raw/ws"), additional_headers=_auth(env)) as ws:
        await ws.send("close:4001")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "upstream says bye")
    # The client closes: the instance gets its code.
    async with connect(_ws_url(env, "/v1/infers/raw/ws"), additional_headers=_auth(env)) as ws:
        await ws.send("ping-pong")
        assert await ws.recv() == "ping-pong"
        await ws.close(4002, "client is done")
    await _until(lambda: len(ws_upstream.closes) == 2)
    assert ws_upstream.closes[1] == 4002
    # The instance vanishes without a close frame: 1011 with the platform's reason.
    async with connect(_ws_url(env, "/v1/infers/raw/ws"), additional_headers=_auth(env)) as ws:
        await ws.send("vanish")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1011 and closed.value.rcvd.reason.startswith("ModelArts.4503 ")
    # The python runtime: its hook ending is 1000 (here: the example's echo never ends by itself,
    # so the client ends it), a failing hook 1011 with its MR.0105 reason, passed through as is.
    async with connect(_ws_url(env, "/v1/infers/chat/chat"), additional_headers=_auth(env)) as ws:
        await ws.send('{"prompt": "x", "max_tokens": "not a number"}')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1011 and closed.value.rcvd.reason.startswith("MR.0105 ")
    await _until(lambda: env.gateway.inflight("i1") == 0 and env.gateway.inflight("u1") == 0)


async def test_subprotocol_and_refusals(env: Env, chat: Instance, ws_upstream: WsUpstream) -> None:
    up_ep = Endpoint("u1", "127.0.0.1", ws_upstream.port)
    routes = table(
        service("raw", [("v1", 100, [up_ep])], websocket=True),
        service("plain", [("v1", 100, [up_ep])]),  # deployed without websocket_upgrade
    )
    await env.serve(routes)
    async with connect(
        _ws_url(env, "/v1/infers/raw/ws"), additional_headers=_auth(env), subprotocols=["chat.v2"]
    ) as ws:
        assert ws.subprotocol == "chat.v2"
    # The instance refuses: its status, headers and body as they are.
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(_ws_url(env, "/v1/infers/raw/elsewhere?a=1"), additional_headers=_auth(env)):
            pass
    response = refused.value.response
    assert (response.status_code, bytes(response.body)) == (418, b"teapot: no upgrade here")
    assert response.headers["x-model-header"] == "kept" and response.headers["x-request-id"]
    # The platform refuses: a service without websocket_upgrade, an unknown service.
    for path, status, code in (("/v1/infers/plain/ws", 400, "MP.4210"), ("/v1/infers/nope/ws", 404, "ModelArts.4201")):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(_ws_url(env, path), additional_headers=_auth(env)):
                pass
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body)["error_code"] == code
    other, _ = env.tokens.issue("u2", "bob", "proj-b")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(_ws_url(env, "/v1/infers/raw/ws"), additional_headers={"X-Auth-Token": other}):
            pass
    assert refused.value.response.status_code == 403
    assert env.gateway.inflight("u1") == 0


async def test_big_messages_reach_the_client_in_64kb_fragments(env: Env, ws_upstream: WsUpstream) -> None:
    await env.serve(
        table(service("raw", [("v1", 100, [Endpoint("u1", "127.0.0.1", ws_upstream.port)])], websocket=True))
    )
    frames = await _raw_frames(env, "/v1/infers/raw/ws", [b"big:200000", b"big:1000"])
    big = frames[: len(frames) - 1]
    assert [f.opcode for f in big] == [Opcode.TEXT, Opcode.CONT, Opcode.CONT, Opcode.CONT]
    assert [len(f.data) for f in big] == [FRAGMENT_BYTES] * 3 + [200000 - 3 * FRAGMENT_BYTES]
    assert [f.fin for f in big] == [False, False, False, True]
    assert b"".join(f.data for f in big) == b"x" * 200000
    small = frames[-1]
    assert (small.opcode, small.fin, len(small.data)) == (Opcode.TEXT, True, 1000)


async def _raw_frames(env: Env, path: str, texts: list[bytes]) -> list[Frame]:
    """Send `texts` with a sans-I/O client over a plain socket; return the data frames received."""
    url = _ws_url(env, path)
    protocol = ClientProtocol(parse_uri(url), max_size=None)
    request = protocol.connect()
    request.headers["X-Auth-Token"] = env.token
    protocol.send_request(request)
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)  # type: ignore[union-attr]
    frames: list[Frame] = []
    finished = 0
    try:
        writer.write(b"".join(protocol.data_to_send()))
        while finished < len(texts) + 1:  # the handshake, then one whole message per text
            data = await asyncio.wait_for(reader.read(1 << 16), 10)
            assert data, "connection closed"
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Frame):
                    if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                        frames.append(event)
                        finished += event.fin
                else:
                    assert event.status_code == 101
                    finished += 1
                    for text in texts:
                        protocol.send_text(text)
            writer.write(b"".join(protocol.data_to_send()))
    finally:
        writer.close()
    return frames


async def test_message_rate_limit_closes_an_abusive_session_with_1008(env: Env, ws_upstream: WsUpstream) -> None:
    endpoint = Endpoint("u1", "127.0.0.1", ws_upstream.port)
    await env.serve(table(service("raw", [("v1", 100, [endpoint])], websocket=True)), ws_message_rate=20)
    url = _ws_url(env, "/v1/infers/raw/ws")
    async with connect(url, additional_headers=_auth(env)) as ws:  # 10 messages/s: fine
        for i in range(10):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
            await asyncio.sleep(0.1)
    async with connect(url, additional_headers=_auth(env)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for i in range(200):
                await ws.send(f"flood{i}")
            while True:
                await ws.recv()
    assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason.startswith("MP.4211 over 20 messages/s")


async def test_qps_limit_counts_handshakes_not_messages(env: Env, ws_upstream: WsUpstream) -> None:
    endpoint = Endpoint("u1", "127.0.0.1", ws_upstream.port)
    await env.serve(
        table(service("raw", [("v1", 100, [endpoint])], websocket=True, qps_limit=2)),
        limiter=LocalLimiter(),
        qps_burst_fraction=1.0,
    )
    url = _ws_url(env, "/v1/infers/raw/ws")
    async with connect(url, additional_headers=_auth(env)) as ws:
        for i in range(50):  # far over 2/s: messages are not QPS-limited
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
        async with connect(url, additional_headers=_auth(env)):
            pass
        with pytest.raises(websockets.InvalidStatus) as refused:  # the third handshake within a second
            async with connect(url, additional_headers=_auth(env)):
                pass
    assert refused.value.response.status_code == 429


async def test_message_over_the_body_limit_closes_with_1009(env: Env, ws_upstream: WsUpstream) -> None:
    endpoint = Endpoint("u1", "127.0.0.1", ws_upstream.port)
    await env.serve(table(service("raw", [("v1", 100, [endpoint])], websocket=True, max_body_bytes=1000)))
    async with connect(_ws_url(env, "/v1/infers/raw/ws"), additional_headers=_auth(env)) as ws:
        await ws.send(b"x" * 1000)
        assert len(await ws.recv()) == 1000
        await ws.send(b"x" * 1001)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009 and closed.value.rcvd.reason.startswith("ModelArts.4104")
    await _until(lambda: ws_upstream.closes)
    assert ws_upstream.closes[0] == 1009


async def test_gateway_shutdown_closes_both_sides_with_1001(env: Env, ws_upstream: WsUpstream) -> None:
    endpoint = Endpoint("u1", "127.0.0.1", ws_upstream.port)
    await env.serve(table(service("raw", [("v1", 100, [endpoint])], websocket=True)))
    ws: ClientConnection
    async with connect(_ws_url(env, "/v1/infers/raw/ws"), additional_headers=_auth(env)) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        stopping = asyncio.create_task(env.server.stop())  # type: ignore[union-attr]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        await stopping
        env.server = None
    assert closed.value.rcvd.code == 1001 and closed.value.rcvd.reason.startswith("ModelArts.4700")
    await _until(lambda: ws_upstream.closes)
    assert ws_upstream.closes[0] == 1001


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
