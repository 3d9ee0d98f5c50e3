"""Several gateway processes: snapshots long-polled from the control plane, and one QPS limit shared through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import PlatformProc, _reap, free_port, make_platform, wait_until
from tests.security.conftest import deploy_probe, error_of
from tests.security.test_limits import check_burst

from modelport.client import Client

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")


class GatewayProc:
    def __init__(self, p: PlatformProc, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelport.cli.main", "gateway", "--port", str(self.port)],
            env={**p.env, "MODELPORT_CONTROL_URL": p.url},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        assert self.proc.poll() is None, "gateway process exited"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlatformProc, list[GatewayProc], str]]:
    _redis_or_skip()
    prefix = f"mptest-{uuid.uuid4().hex[:12]}:"
    home = tmp_path_factory.mktemp("multi")
    p = make_platform(home, MODELPORT_REDIS_URL=REDIS_URL, MODELPORT_REDIS_PREFIX=prefix)
    p.env.pop("MODELPORT_QPS_LIMIT", None)
    p.start()
    gateways: list[GatewayProc] = []
    try:
        gateways = [GatewayProc(p, home / f"gateway-{i}.log") for i in range(2)]
        for g in gateways:
            wait_until(g.ready, 30, what="gateway-only process ready")
        yield p, gateways, prefix
    finally:
        for g in gateways:
            g.stop()
        _reap(p)
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)


def test_gateways_follow_routes_and_auth(cluster: tuple[PlatformProc, list[GatewayProc], str]) -> None:
    p, gateways, _ = cluster
    c = p.client()
    sid = deploy_probe(c, "probe-multi")
    token = c.token()
    for g in gateways:
        url = f"{g.url}/v1/infers/{sid}"
        wait_until(lambda u=url: httpx.post(u, json={}, headers={"X-Auth-Token": token}).status_code == 200, 15)
        assert error_of(httpx.post(url, json={})) == (401, "ModelArts.0201")
    # an auth change (a new bound app) reaches them without a restart
    app = c.create_app("multi-app")
    code = c.add_app_code(app["app_id"])["app_code"]
    c.bind_app(app["app_id"], sid)
    for g in gateways:
        url = f"{g.url}/v1/infers/{sid}"
        wait_until(lambda u=url: httpx.post(u, json={}, headers={"X-Apig-AppCode": code}).status_code == 200, 10)
    # … and so does a revocation
    cred = c.create_credential()
    signed = Client(gateways[0].url, c.project_id, access_key=cred["access"], secret_key=cred["secret"])
    wait_until(lambda: signed.predict_raw(sid, json={}).status_code == 200, 10, what="AK known to the gateway")
    c.delete_credential(cred["access"])
    wait_until(lambda: signed.predict_raw(sid, json={}).status_code == 401, 10, what="deleted AK refused")
    signed.close()
    # the internal feed is not open to anyone
    resp = httpx.get(f"{p.url}/internal/v1/snapshot", params={"timeout": 0})
    assert error_of(resp) == (401, "ModelArts.0203")
    assert "/internal" not in httpx.get(f"{p.url}/openapi.json").text
    c.close()


async def _spread_burst(urls: list[str], headers: dict[str, str], n: int, seconds: float):  # type: ignore[no-untyped-def]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=n)
    clients = [httpx.AsyncClient(timeout=30, headers=headers, limits=limits) for _ in urls]
    try:
        start = time.perf_counter()

        async def one(i: int) -> tuple[float, httpx.Response]:
            await asyncio.sleep(max(0.0, start + i * seconds / n - time.perf_counter()))
            sent = time.perf_counter()
            k = i % len(urls)
            return sent, await clients[k].post(urls[k], json={"i": i})

        results = await asyncio.gather(*(one(i) for i in range(n)))
        total = time.perf_counter() - start
    finally:
        for client in clients:
            await client.aclose()
    sent = [t for t, _ in results]
    return [r for _, r in results], max(sent) - min(sent), total


def test_qps_limit_holds_across_two_gateways(cluster: tuple[PlatformProc, list[GatewayProc], str]) -> None:
    p, gateways, prefix = cluster
    c = p.client()
    sid = deploy_probe(c, "probe-shared-qps")
    headers = {"X-Auth-Token": c.token()}
    urls = [f"{g.url}/v1/infers/{sid}" for g in gateways]
    for url in urls:
        wait_until(lambda u=url: httpx.post(u, json={}, headers=headers).status_code == 200, 15)
    time.sleep(0.3)  # the bucket refills after the probes above
    resps, window, total = asyncio.run(_spread_burst(urls, headers, 300, 1.0))
    ok, limited = check_burst(resps, 100, window, total)
    print(f"2 gateways: 300 requests sent over {window:.2f} s (done in {total:.2f} s): {ok} ok, {limited} x 429")
    # each gateway got ~150 of them and alone would have let ~110 through: together still ~110
    if total <= 1.3:
        assert 150 <= limited <= 200, (ok, limited)
    import redis

    assert redis.Redis.from_url(REDIS_URL).exists(f"{prefix}qps:{sid}")
    c.close()
