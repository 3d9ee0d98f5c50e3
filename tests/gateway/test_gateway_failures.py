"""Gateway failure handling over real HTTP: dead instances, retries, stale keep-alive, timeouts, limits."""

from __future__ import annotations

import asyncio
import random
import time

from gwtools import Env, answered_by, error_of, service, table


async def test_dead_instance_is_retried_on_another_without_client_errors(env: Env) -> None:
    a, b = await env.upstream("a"), await env.upstream("b")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint, b.endpoint])])))
    # Warm the pool: keep-alive connections to both.
    assert {answered_by(await client.post("/v1/infers/s1", json={})) for _ in range(6)} == {"a", "b"}
    await b.stop()  # the instance dies; the orchestrator has not noticed yet
    answers = await asyncio.gather(*[client.post("/v1/infers/s1", json={"i": i}) for i in range(30)])
    assert [answered_by(r) for r in answers] == ["a"] * 30
    for _ in range(10):  # sequential too: each request to b is refused and moved to a
        assert answered_by(await client.get("/v1/infers/s1")) == "a"


async def test_all_instances_dead_is_502(env: Env) -> None:
    a, b = await env.upstream("a"), await env.upstream("b")
    client = await env.serve(table(service("s1", [("v1", 60, [a.endpoint]), ("v2", 40, [b.endpoint])])))
    assert (await client.post("/v1/infers/s1")).status_code == 200
    await a.stop()
    await b.stop()
    for _ in range(3):
        r = await client.post("/v1/infers/s1", json={"x": 1})
        assert r.status_code == 502
        assert error_of(r) == "ModelArts.4503"
    assert env.gateway.take_stats()["s1"] == (4, 3)


async def test_stale_keep_alive_connection_is_retried_transparently(env: Env) -> None:
    racy = await env.racy_upstream("racy")
    client = await env.serve(table(service("s1", [("v1", 100, [racy.endpoint])])))
    for i in range(20):
        r = await client.post("/v1/infers/s1", json={"i": i})
        assert answered_by(r) == "racy"
        r = await client.get("/v1/infers/s1")
        assert answered_by(r) == "racy"
    # Every reuse of a pooled connection met a connection the instance had closed.
    assert racy.dropped >= 30


async def test_instance_closing_idle_connections_quickly_causes_no_errors(env: Env) -> None:
    a = await env.upstream("a", keepalive_timeout=0.05)
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    rng = random.Random(7)
    for _ in range(40):
        assert answered_by(await client.post("/v1/infers/s1", json={})) == "a"
        await asyncio.sleep(rng.uniform(0.03, 0.07))


async def test_timeout_is_504_with_per_service_override(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])], timeout_s=1.0)))
    started = time.monotonic()
    r = await client.post("/v1/infers/s1/slow?s=5")
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and error_of(r) == "ModelArts.4503"
    assert 0.9 < elapsed < 2.5
    assert env.gateway.inflight("a") == 0
    assert answered_by(await client.post("/v1/infers/s1/slow?s=0.1")) == "a"


async def test_declared_oversized_body_is_rejected_before_reading(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(
        table(
            service("s1", [("v1", 100, [a.endpoint])]),
            service("small", [("v1", 100, [a.endpoint])], max_body_bytes=1000),
        )
    )
    r = await client.post("/v1/infers/small", content=b"x" * 1001)
    assert r.status_code == 413 and error_of(r) == "ModelArts.4104"
    # Default limit (12 MB): declare 20 MB and send nothing; the answer must come anyway.
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)  # type: ignore[union-attr]
    writer.write(
        b"POST /v1/infers/s1 HTTP/1.1\r\nhost: x\r\nx-auth-token: %b\r\ncontent-length: %d\r\n\r\n"
        % (env.token.encode(), 20 * 1024 * 1024)
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413 ")
    writer.close()
    assert a.requests == []
    assert (await client.post("/v1/infers/small", content=b"x" * 1000)).status_code == 200


async def test_chunked_body_over_the_limit_is_cut(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(
        table(
            service("tiny", [("v1", 100, [a.endpoint])], max_body_bytes=1000),
            service("mid", [("v1", 100, [a.endpoint])], max_body_bytes=200_000),
        )
    )

    async def chunks(n: int, size: int):  # no length: httpx sends it chunked
        for _ in range(n):
            yield b"y" * size

    r = await client.post("/v1/infers/tiny", content=chunks(5, 300))
    assert r.status_code == 413 and error_of(r) == "ModelArts.4104"
    assert a.requests == []  # caught while buffering, before any upstream contact
    r = await client.post("/v1/infers/mid", content=chunks(50, 10_000))
    assert r.status_code == 413 and error_of(r) == "ModelArts.4104"
    r = await client.post("/v1/infers/mid", content=chunks(19, 10_000))
    assert r.status_code == 200 and r.json()["body_len"] == 190_000
    assert env.gateway.inflight("a") == 0


async def test_client_disconnect_drops_the_upstream_exchange(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    task = asyncio.create_task(client.post("/v1/infers/s1/slow?s=3"))
    await asyncio.sleep(0.5)
    assert env.gateway.inflight("a") == 1
    task.cancel()
    started = time.monotonic()
    while env.gateway.inflight("a") and time.monotonic() - started < 2:
        await asyncio.sleep(0.02)
    assert env.gateway.inflight("a") == 0
    assert time.monotonic() - started < 1.0  # not waiting for the model's answer
    assert answered_by(await client.post("/v1/infers/s1")) == "a"
