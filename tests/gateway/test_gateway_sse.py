"""Server-Sent Events through the gateway from a real python-runtime instance: spacing, keep-alives,
client disconnects reaching the handler, the idle timeout between events, and stream metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from gwtools import Env, service, table
from prometheus_client import REGISTRY
from tests.runtime.runtime_support import Instance, launch_instance, write_package

from modelport.auth.tokens import TokenService
from modelport.gateway.app import Gateway
from modelport.gateway.routes import Endpoint
from modelport.settings import Settings

# An async generator handler: `n` events `gap` s apart, a `pause` before event `pause_at`; a stream
# the client abandons is cancelled where it awaits, and says so in the marker file.
HANDLER = """
import asyncio
import os

from modelport import BaseService


class Events(BaseService):
    def _inference(self, data):
        return self._events(int(data.get("n", 20)), float(data.get("gap", 0.05)),
                            int(data.get("pause_at", -1)), float(data.get("pause", 0)), data.get("tag", ""))

    async def _events(self, n, gap, pause_at, pause, tag):
        sent = 0
        try:
            for i in range(n):
                if i:
                    await asyncio.sleep(pause if i == pause_at else gap)
                yield {"i": i}
                sent += 1
        except (GeneratorExit, asyncio.CancelledError):
            with open(os.environ["TEST_MARKER"], "a") as fh:
                fh.write(f"{tag} cancelled after {sent}\\n")
            raise
"""


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker") / "cancelled.txt"


def _launch(root: Path, marker: Path, keepalive_s: float) -> Iterator[Instance]:
    config = {"model_type": "Custom", "stream": {"keepalive_s": keepalive_s}}
    package = write_package(root / "pkg", config, {"customize_service.py": HANDLER})
    inst = launch_instance(package, root, {"TEST_MARKER": str(marker)})
    try:
        inst.wait_healthy()
        yield inst
    finally:
        inst.stop()


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory, marker: Path) -> Iterator[Instance]:
    """Sends a keep-alive comment after 0.4 s of silence."""
    yield from _launch(tmp_path_factory.mktemp("sse"), marker, 0.4)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory, marker: Path) -> Iterator[Instance]:
    """Sends no keep-alives."""
    yield from _launch(tmp_path_factory.mktemp("quiet"), marker, 0)


async def _serve(env: Env, instance: Instance, **route: object) -> str:
    endpoint = Endpoint("i1", "127.0.0.1", instance.port)
    await env.serve(table(service("s1", [("v1", 100, [endpoint])], **route)))
    return f"{env.server.url}/v1/infers/s1/"  # type: ignore[union-attr]


async def _events(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], token: str
) -> tuple[list[tuple[float, bytes]], int, dict[str, str]]:
    """(arrival time, event) of every SSE message (comments included), the status and the headers."""
    arrivals: list[tuple[float, bytes]] = []
    buffer = b""
    async with session.post(url, json=body, headers={"X-Auth-Token": token}) as r:
        headers = {k.lower(): v for k, v in r.headers.items()}
        try:
            async for chunk in r.content.iter_any():
                now = time.monotonic()
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    arrivals.append((now, event))
        except aiohttp.ClientPayloadError:
            pass  # the gateway cut the stream
        return arrivals, r.status, headers


def _data(arrivals: list[tuple[float, bytes]]) -> list[tuple[float, dict]]:
    return [(t, json.loads(e[len(b"data: ") :])) for t, e in arrivals if e.startswith(b"data: ")]


def _stream_events_total(service_id: str) -> float:
    return REGISTRY.get_sample_value("modelport_gateway_stream_events_total", {"service_id": service_id}) or 0.0


async def test_twenty_events_50ms_apart_arrive_spaced(env: Env, instance: Instance) -> None:
    url = await _serve(env, instance)
    before = _stream_events_total("s1")
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        arrivals, status, headers = await _events(session, url, {"n": 20, "gap": 0.05}, env.token)
    assert status == 200
    assert headers["content-type"] == "text/event-stream;charset=UTF-8"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    events = _data(arrivals)
    assert [e["i"] for _, e in events] == list(range(20))
    # Each event arrives on its own, about when the handler yields it: not in one lump at the end
    # (a busy machine may hold this client back long enough to read two at once, now and then).
    gaps = sorted(t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(events))
    assert gaps[3] > 0.02 and gaps[len(gaps) // 2] > 0.035, gaps
    assert events[0][0] - started < 0.5
    assert events[-1][0] - events[0][0] > 0.019 * 50  # 19 gaps of 50 ms
    assert _stream_events_total("s1") - before >= 20


async def test_keepalive_comments_pass_through_and_keep_a_quiet_stream_open(env: Env, instance: Instance) -> None:
    # The service times out after 1 s of silence; the handler pauses 2 s, during which the runtime
    # sends a keep-alive comment every 0.4 s: the stream lives, the client sees the comments.
    url = await _serve(env, instance, timeout_s=1.0)
    async with aiohttp.ClientSession() as session:
        body = {"n": 3, "gap": 0.05, "pause_at": 2, "pause": 2.0}
        arrivals, status, _ = await _events(session, url, body, env.token)
    assert status == 200
    assert [e["i"] for _, e in _data(arrivals)] == [0, 1, 2]
    assert sum(1 for _, e in arrivals if e == b": keep-alive") >= 3


async def test_client_disconnect_cancels_the_handler(env: Env, instance: Instance, marker: Path) -> None:
    url = await _serve(env, instance)
    tag = os.urandom(4).hex()
    async with aiohttp.ClientSession() as session:
        body = {"n": 400, "gap": 0.05, "tag": tag}
        async with session.post(url, json=body, headers={"X-Auth-Token": env.token}) as r:
            seen = b""
            async for chunk in r.content.iter_any():
                seen += chunk
                if seen.count(b"data:") >= 3:
                    break
            assert env.gateway.inflight("i1") == 1
            r.close()  # hang up mid-stream (the handler would go on for 20 s)
    left = time.monotonic()
    while time.monotonic() - left < 5:
        lines = marker.read_text().splitlines() if marker.exists() else []
        done = [line for line in lines if line.startswith(tag)]
        if done and env.gateway.inflight("i1") == 0:
            break
        await asyncio.sleep(0.05)
    assert done, "the handler never saw the stream cancelled"
    assert int(done[0].rsplit(" ", 1)[1]) < 40  # stopped soon after the client left
    assert time.monotonic() - left < 2.0


async def test_idle_timeout_bounds_silence_between_events_not_the_stream(env: Env, quiet: Instance) -> None:
    # Scaled down from "a 90 s stream with events every 5 s is not cut by the 40 s timeout, while
    # an idle 41 s gap is": a 2 s per-service timeout, events every 0.5 s for 5 s vs a 2.5 s gap
    # (from an instance without keep-alives, which would fill the gap).
    url = await _serve(env, quiet, timeout_s=2.0)
    async with aiohttp.ClientSession() as session:
        flowing, status, _ = await _events(session, url, {"n": 11, "gap": 0.5, "tag": "flow"}, env.token)
        assert status == 200
        assert [e["i"] for _, e in _data(flowing)] == list(range(11))  # 5 s > 2 s timeout: not cut
        assert flowing[-1][0] - flowing[0][0] > 4.5
        started = time.monotonic()
        body = {"n": 5, "gap": 0.1, "pause_at": 2, "pause": 2.5, "tag": "gap"}
        stalled, status, _ = await _events(session, url, body, env.token)
        assert status == 200
        assert [e["i"] for _, e in _data(stalled)] == [0, 1]  # cut in the 2.5 s silence
        assert time.monotonic() - started > 2.0  # not before the 2 s of silence


async def test_stream_idle_timeout_is_set_per_service(env: Env, quiet: Instance) -> None:
    # A short wait for the answer, a longer silence allowed once it streams; and the other way round.
    url = await _serve(env, quiet, timeout_s=1.0, stream_idle_timeout_s=3.0)
    async with aiohttp.ClientSession() as session:
        body = {"n": 3, "gap": 0.05, "pause_at": 1, "pause": 1.5}
        arrivals, status, _ = await _events(session, url, body, env.token)
        assert status == 200 and [e["i"] for _, e in _data(arrivals)] == [0, 1, 2]
        env.gateway.set_routes(
            table(service("s1", [("v1", 100, [Endpoint("i1", "127.0.0.1", quiet.port)])], stream_idle_timeout_s=0.5))
        )
        arrivals, status, _ = await _events(session, url, body, env.token)
        assert status == 200 and [e["i"] for _, e in _data(arrivals)] == [0]


def test_default_timeout_is_40_s_and_bounds_silence_too() -> None:
    assert Settings().request_timeout_s == 40.0
    gateway = Gateway(TokenService(os.urandom(32)))
    assert gateway.timeout_s == 40.0
    route = service("s", [("v1", 100, [])])
    assert route.timeout_s is None and route.stream_idle_timeout_s is None  # both: the gateway's 40 s
