"""Unit and property tests of the tricky parts: token buckets, login throttle, signer/verifier, snapshots, feed."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.auth import signing
from modelport.auth.secrets import SecretBox
from modelport.auth.snapshot import AuthRecords, code_digest, open_records
from modelport.auth.throttle import LoginThrottle
from modelport.control.internal_api import SnapshotFeed
from modelport.control.service_limits import check, merge, route_fields
from modelport.errors import PlatformError
from modelport.gateway.ratelimit import LocalLimiter, RedisLimiter, TokenBucket, burst_for


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 500),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.05, allow_nan=False), min_size=1, max_size=120),
)
def test_bucket_never_admits_more_than_burst_plus_rate_t(rate: int, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - start) + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(1, 1000), burst=st.integers(1, 20), start=st.floats(0, 100))
def test_bucket_retry_after_is_exact(rate: int, burst: int, start: float) -> None:
    bucket = TokenBucket(rate, burst, start)
    for _ in range(burst):
        assert bucket.take(start) == 0.0
    wait = bucket.take(start)
    assert wait == pytest.approx(1 / rate)
    assert bucket.take(start + wait * 0.5) > 0.0
    assert bucket.take(start + wait + 1e-9) == 0.0


def test_requests_at_the_rate_all_pass() -> None:
    clock = [0.0]
    limiter = LocalLimiter(clock=lambda: clock[0])
    for i in range(1000):
        clock[0] = i / 100
        assert limiter.take_now("s", 100, burst_for(100, 0.1)) == 0.0
    assert burst_for(100, 0.1) == 10 and burst_for(5, 0.1) == 1


def test_redis_limiter_shared_and_fallback() -> None:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis: {exc}")
    prefix = f"mptest-{uuid.uuid4().hex[:10]}:"

    async def run() -> tuple[int, int]:
        a, b = RedisLimiter(url, prefix), RedisLimiter(url, prefix)  # two "gateways"
        try:
            results = [await (a if i % 2 else b).take("svc", 1, 5) for i in range(40)]
            # concurrent requests are batched into one script call per limiter, still exactly
            together = await asyncio.gather(*((a if i % 2 else b).take("svc2", 1, 7) for i in range(100)))
            assert sum(w == 0.0 for w in together) == 7
            assert max(together) >= 40  # a refused request waits until its token is back (rate 1/s)
        finally:
            await a.aclose()
            await b.aclose()
        down = RedisLimiter("redis://127.0.0.1:1/0", prefix)
        fallback = [await down.take("svc", 1, 3) for _ in range(10)]
        await down.aclose()
        return sum(r == 0.0 for r in results), sum(r == 0.0 for r in fallback)

    shared, fallback = asyncio.run(run())
    assert shared == 5  # burst 5 in total, not per limiter
    assert fallback == 3  # Redis down: exact local buckets instead of no limit
    r = redis.Redis.from_url(url)
    for key in r.scan_iter(f"{prefix}*"):
        assert r.pttl(key) > 0  # buckets expire by themselves
        r.delete(key)


def test_login_throttle_doubles_and_resets() -> None:
    t = LoginThrottle(max_failures=3, max_lockout_s=5)
    for _ in range(2):
        t.failed("u", "ip", now=0)
    assert t.retry_after("u", "ip", now=0) == 0
    t.failed("u", "ip", now=0)
    assert t.retry_after("u", "ip", now=0) == 1
    t.failed("u", "ip", now=2)
    assert t.retry_after("u", "ip", now=2) == 2
    for _ in range(10):
        t.failed("u", "ip", now=10)
    assert t.retry_after("u", "ip", now=10) == 5  # capped
    assert t.retry_after("u", "other-ip", now=10) == 0 and t.retry_after("v", "ip", now=10) == 0
    t.succeeded("u", "ip")
    assert t.retry_after("u", "ip", now=10) == 0


_segment = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/?#"), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    segments=st.lists(_segment, min_size=1, max_size=4),
    query=st.lists(st.tuples(_segment, st.text(max_size=6)), max_size=4),
    body=st.binary(max_size=200),
    flip=st.integers(0, 10_000),
)
def test_client_signer_and_server_verifier_agree(method, segments, query, body, flip) -> None:  # type: ignore[no-untyped-def]
    from urllib.parse import quote

    path = "/v1/" + "/".join(quote(s, safe="") for s in segments)
    qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    headers = {"Host": "127.0.0.1:8000", "Content-Type": "application/json", "X-Project-Id": "p"}
    now = datetime(2024, 1, 1, tzinfo=UTC)
    added = signing.sign("AK", "SK", method, path, qs, headers, body, now=now)
    lower = {k.lower(): v for k, v in {**headers, **added}.items()}

    def verify(b: bytes, m: str = method) -> str:
        return signing.verify(m, path, qs, lower, hashlib.sha256(b).hexdigest(), {"AK": "SK"}.get, now=now)

    assert verify(body) == "AK"
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        with pytest.raises(signing.SignatureError):
            verify(tampered)
    with pytest.raises(signing.SignatureError):
        verify(body, "PATCH")


def test_snapshot_records_round_trip_and_decisions() -> None:
    box = SecretBox(b"k" * 32)
    records = AuthRecords(
        access_keys=[["AK1", "u1", box.seal("sk-1")]],
        apps=[["app1", "p1", "KEY1", box.seal("app-secret")], ["app2", "p1", "KEY2", "v1:broken"]],
        app_codes=[[code_digest("code-1"), "app1"]],
        bindings=[["app1", "svc1"]],
        roles=[["u1", "p1", "viewer"], ["u2", "p1", "developer"]],
        users={"u1": ["alice", False, 5.0], "u2": ["bob", True, 0.0]},
    )
    again = AuthRecords.from_json(records.to_json())
    assert again == records and again.fingerprint() == records.fingerprint()
    assert "sk-1" not in str(records.to_json()) and "app-secret" not in str(records.to_json())
    snap = open_records(again, box, 7)
    assert snap.keys["AK1"] == ("sk-1", "u1") and snap.apps["KEY1"].secret == "app-secret"
    assert "KEY2" not in snap.apps  # a secret that cannot be opened signs nothing
    assert snap.app_codes[code_digest("code-1")] == "app1" and snap.bound("app1", "svc1")
    assert not snap.bound("app1", "svc2")
    assert snap.may("u1", "p1", "modelarts:service:predict") is True
    assert snap.may("u1", "p1", "modelarts:service:create") is False
    assert snap.may("u1", "p2", "modelarts:service:get") is None
    assert snap.valid_after["u1"] == 5.0 and snap.users["u2"] == ("bob", True)


def test_service_limits_validation() -> None:
    assert check({"qps_limit": 50, "auth": "none", "other": 1}) == {"qps_limit": 50, "auth": "none", "other": 1}
    for bad in ({"qps_limit": 0}, {"qps_limit": 1.5}, {"qps_limit": True}, {"qps_limit": "9"}, {"auth": "open"}):
        with pytest.raises(PlatformError):
            check(bad)
    assert merge({"qps_limit": 5, "x": 1}, {"qps_limit": None}) == {"x": 1}
    assert route_fields({"auth": "none", "qps_limit": 3})["auth_required"] is False
    assert route_fields({"qps_limit": "garbage stored long ago"}) == {}


def test_feed_long_poll_wakes_on_change() -> None:
    async def run() -> None:
        feed = SnapshotFeed()
        feed.bind(asyncio.get_running_loop())
        first = feed.revision
        waiter = asyncio.create_task(feed.wait(first, 5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await asyncio.to_thread(feed.publish, routes={"revision": 1, "services": {}})
        await asyncio.wait_for(waiter, 1)
        assert feed.current()["revision"] != first and feed.current()["routes"]["revision"] == 1
        await asyncio.wait_for(feed.wait(first, 5), 0.1)  # stale revision: at once
        started = asyncio.get_running_loop().time()
        await feed.wait(feed.revision, 0.2)  # nothing new: the timeout
        assert asyncio.get_running_loop().time() - started >= 0.19

    asyncio.run(run())
