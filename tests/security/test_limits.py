"""Gateway limits (QPS, body size, timeout) and the management API's refusal of oversized or malformed bodies."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest
from tests.conftest import wait_until
from tests.security.conftest import World, deploy_probe, error_of, probe_lines

from modelport.settings import Settings

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


async def burst(url: str, headers: dict[str, str], n: int, seconds: float) -> tuple[list[httpx.Response], float, float]:
    """`n` requests sent evenly over `seconds`; returns the responses, the send window and the total time."""
    # No pool limit: a request never waits for a free connection, so it goes out at its time.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        # warm some connections so that connecting does not bunch the first sends
        await asyncio.gather(*(client.get(url.replace("/v1/infers", "/healthz-none")) for _ in range(32)))
        start = time.perf_counter()

        async def one(i: int) -> tuple[float, httpx.Response]:
            await asyncio.sleep(max(0.0, start + i * seconds / n - time.perf_counter()))
            sent = time.perf_counter()
            return sent, await client.post(url, json={"i": i})

        results = await asyncio.gather(*(one(i) for i in range(n)))
        total = time.perf_counter() - start
    sent_times = [t for t, _ in results]
    return [r for _, r in results], max(sent_times) - min(sent_times), total


def check_burst(resps: list[httpx.Response], rate: int, window: float, total: float) -> tuple[int, int]:
    burst_size = max(1, -(-rate // 10))  # ceil(rate * MODELPORT_QPS_BURST_FRACTION=0.1)
    ok = sum(r.status_code == 200 for r in resps)
    limited = [r for r in resps if r.status_code == 429]
    assert ok + len(limited) == len(resps), {r.status_code for r in resps}
    for r in limited:
        assert r.json()["error_code"] == "ModelArts.4206" and int(r.headers["Retry-After"]) >= 1
    # A token bucket admits at most burst + rate * t in t seconds, and (sent faster than rate) about that many.
    assert rate * window - burst_size <= ok <= burst_size + rate * total + 1, (ok, window, total)
    return ok, len(limited)


def test_qps_default_limit_burst(world: World) -> None:
    admin = world.admin()
    sid = deploy_probe(admin, "probe-qps")
    assert "qps_limit" not in admin.get_service(sid)["additional_properties"]  # the default: 100/s
    headers = {"X-Auth-Token": admin.token()}
    url = f"{world.url}/v1/infers/{sid}"
    resps, window, total = asyncio.run(burst(url, headers, 300, 1.0))
    ok, limited = check_burst(resps, 100, window, total)
    print(f"default limit: 300 requests sent over {window:.2f} s (done in {total:.2f} s): {ok} ok, {limited} x 429")
    if total <= 1.3:  # the burst really was 300 in about a second (not stretched by a busy machine)
        assert 150 <= limited <= 200, (ok, limited)
    # set-qps through the CLI; the new limit applies as soon as the route table has it
    proc = subprocess.run(
        [sys.executable, "-m", "modelport.cli.main", "service", "set-qps", "probe-qps", "20", "--json"],
        env=world.p.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["additional_properties"]["qps_limit"] == 20
    time.sleep(1.5)  # a tick of the orchestrator, and a full bucket again
    resps, window, total = asyncio.run(burst(url, headers, 100, 1.0))
    check_burst(resps, 20, window, total)
    admin.delete_service(sid)


def test_body_limit_before_the_instance(world: World) -> None:
    admin = world.admin()
    headers = {"X-Auth-Token": admin.token(), "Content-Type": "application/octet-stream"}
    url = f"{world.url}/v1/infers/{world.service_a}"
    ok = httpx.post(f"{url}/exactly-12mib", content=b"a" * (12 * MIB), headers=headers, timeout=60)
    assert ok.status_code == 200 and ok.json()["bytes"] == 12 * MIB
    resp = httpx.post(f"{url}/too-big", content=b"a" * (12 * MIB + 1), headers=headers, timeout=60)
    assert error_of(resp) == (413, "ModelArts.4104")
    assert resp.json()["request_id"] == resp.headers["x-request-id"]

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(12):
            yield b"b" * MIB
        yield b"b"

    resp = httpx.post(f"{url}/too-big-chunked", content=chunks(), headers=headers, timeout=60)
    assert error_of(resp) == (413, "ModelArts.4104")
    time.sleep(0.5)
    seen = probe_lines(admin, world.service_a)
    assert any("exactly-12mib" in line for line in seen)
    assert not any("too-big" in line for line in seen), seen  # no complete oversized request reached the model
    # a per-service override
    small = deploy_probe(admin, "probe-small", max_body_bytes=1000)
    url = f"{world.url}/v1/infers/{small}"
    assert httpx.post(url, content=b"x" * 1000, headers=headers).status_code == 200
    assert error_of(httpx.post(url, content=b"x" * 1001, headers=headers)) == (413, "ModelArts.4104")
    admin.delete_service(small)


def test_timeout_override_and_default() -> None:
    # The default is the spec's 40 s (the gateway's default, used by routes without an override).
    from modelport.auth.tokens import TokenService
    from modelport.control.service_limits import route_fields
    from modelport.gateway.app import Gateway

    assert Settings(_env_file=None).request_timeout_s == 40.0
    assert Gateway(TokenService(b"k" * 32)).timeout_s == 40.0
    assert route_fields({})["timeout_s"] is None
    assert route_fields({"request_timeout_s": 2})["timeout_s"] == 2.0


def test_timeout_504(world: World) -> None:
    admin = world.admin()
    sid = deploy_probe(admin, "probe-slow", request_timeout_s=2)
    headers = {"X-Auth-Token": admin.token()}
    started = time.monotonic()
    resp = httpx.post(f"{world.url}/v1/infers/{sid}/slow?s=41", json={}, headers=headers, timeout=60)
    took = time.monotonic() - started
    assert error_of(resp) == (504, "ModelArts.4503"), resp.text
    assert 1.9 <= took < 5, took
    wait_until(lambda: any("/slow" in line for line in probe_lines(admin, sid)), 10, what="the call reached the model")
    # back to the default (40 s) by removing the override
    admin.update_service(sid, {"additional_properties": {"request_timeout_s": None}})
    assert "request_timeout_s" not in admin.get_service(sid)["additional_properties"]
    admin.delete_service(sid)


def test_management_api_refuses_bad_bodies(world: World) -> None:
    headers = {"X-Auth-Token": world.admin().token(), "Content-Type": "application/json"}
    url = f"{world.url}/v1/{world.project_a}/services"
    big = json.dumps({"service_name": "x" * (MIB + 10)}).encode()
    resp = httpx.post(url, content=big, headers=headers)
    assert error_of(resp) == (413, "MP.0413") and resp.json()["request_id"]

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"service_name": "'
        for _ in range(2):
            yield b"y" * MIB
        yield b'"}'

    assert error_of(httpx.post(url, content=chunks(), headers=headers)) == (413, "MP.0413")
    bad = [
        b"{not json",
        b'{"service_name": "a", ',
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"[" * 10000 + b"]" * 10000,
        b'{"service_name": "a", "infer_type": "real-time", "config": [{"instance_count": 1e999}]}',
        b'{"service_name": NaN}',
    ]
    for body in bad:
        resp = httpx.post(url, content=body, headers=headers)
        status, code = error_of(resp)
        assert status == 400 and code in ("ModelArts.4105", "ModelArts.0101"), (body[:40], resp.text)
        assert resp.json()["request_id"]
    # a form body where JSON is expected
    resp = httpx.post(url, data={"a": "b"}, headers={"X-Auth-Token": headers["X-Auth-Token"]})
    assert error_of(resp)[0] == 400
