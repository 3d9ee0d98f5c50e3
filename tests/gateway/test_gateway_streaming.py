"""Gateway streaming over real HTTP: big bodies both ways without buffering, incremental response chunks."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
from gwtools import Env, service, table

MB = 1024 * 1024


async def test_12mb_body_round_trip_is_intact_full_duplex(env: Env) -> None:
    # /echo-body streams the body back while it is still being uploaded; aiohttp's client reads
    # the answer while it sends, so this only completes if the gateway proxies both ways at once.
    a = await env.upstream("a")
    await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    payload = os.urandom(12 * MB)  # exactly the default limit: allowed
    headers = {"X-Auth-Token": env.token}
    async with aiohttp.ClientSession(env.server.url) as session:  # type: ignore[union-attr]
        for data in (payload, _chunks(payload)):  # with Content-Length, then chunked
            async with session.post("/v1/infers/s1/echo-body", data=data, headers=headers) as r:
                assert r.status == 200
                got = await r.read()
            assert len(got) == len(payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        async with session.post("/v1/infers/s1/echo-body", data=payload + b"!", headers=headers) as r:
            assert r.status == 413 and (await r.json())["error_code"] == "ModelArts.4104"
    assert env.gateway.inflight("a") == 0


async def _chunks(payload: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(payload), size):
        yield payload[i : i + size]


async def test_chunked_upload_streams_through(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    digest = hashlib.sha256()

    async def body():
        for i in range(64):
            chunk = bytes([i]) * 65_536
            digest.update(chunk)
            yield chunk

    r = await client.post("/v1/infers/s1/echo-body", content=body())
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == digest.hexdigest()


async def test_response_chunks_arrive_as_the_model_sends_them(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    arrivals: list[tuple[float, bytes]] = []
    async with client.stream("POST", "/v1/infers/s1/stream?n=5&gap=0.15") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["x-modelport-version"] == "v1"
        async for chunk in r.aiter_raw():
            arrivals.append((time.monotonic(), chunk))
    assert b"".join(c for _, c in arrivals) == b"".join(b"data: %d\n\n" % i for i in range(5))
    assert len(arrivals) == 5, arrivals
    gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(arrivals)]
    assert all(g > 0.1 for g in gaps), gaps


async def test_streamed_response_survives_timeout_while_it_flows(env: Env) -> None:
    # The timeout bounds the wait for the answer and each silence, not a stream that keeps flowing.
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])], timeout_s=0.5)))
    r = await client.post("/v1/infers/s1/stream?n=6&gap=0.2")
    assert r.status_code == 200 and r.content.count(b"data:") == 6
    try:
        async with client.stream("POST", "/v1/infers/s1/stream?n=3&gap=1.0") as r:
            assert r.status_code == 200
            got = b"".join([c async for c in r.aiter_raw()])
    except httpx.RemoteProtocolError:
        got = b"cut"
    assert got.count(b"data:") < 3  # stalled longer than the timeout: cut


async def test_client_leaving_a_stream_stops_the_upstream_stream(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    async with client.stream("POST", "/v1/infers/s1/stream?n=100&gap=0.05") as r:
        async for chunk in r.aiter_raw():
            assert chunk.startswith(b"data: 0")
            assert env.gateway.inflight("a") == 1
            break
    # The client hung up after one event; the gateway must notice and drop the upstream stream
    # long before the model would have finished it (5 s).
    started = time.monotonic()
    while env.gateway.inflight("a") and time.monotonic() - started < 3:
        await asyncio.sleep(0.02)
    assert env.gateway.inflight("a") == 0
    assert time.monotonic() - started < 1.0


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_gateway_process_never_holds_a_12mb_body(env: Env) -> None:
    # The gateway in its own process (as in production); its peak RSS must not grow by the body.
    a = await env.upstream("a")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "_gateway_server.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--upstream", f"127.0.0.1:{a.port}", stdout=asyncio.subprocess.PIPE
    )
    try:
        ready = (await asyncio.wait_for(proc.stdout.readline(), 30)).split()  # type: ignore[union-attr]
        _, port, service_id, token = (x.decode() for x in ready)
        url = f"http://127.0.0.1:{port}/v1/infers/{service_id}/echo-body"
        payload = os.urandom(12 * MB)
        async with aiohttp.ClientSession(headers={"X-Auth-Token": token}) as session:
            for data in (b"warm-up" * 100_000, b"warm-up" * 100_000):
                async with session.post(url, data=data) as r:
                    assert r.status == 200 and await r.read() == data
            before = _peak_rss(proc.pid)
            async with session.post(url, data=payload) as r:
                assert r.status == 200
                assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(payload).digest()
            grown = _peak_rss(proc.pid) - before
        assert grown < 6 * MB, f"gateway peak RSS grew by {grown / MB:.1f} MB for a 12 MB body"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
