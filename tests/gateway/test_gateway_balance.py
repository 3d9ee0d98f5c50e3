"""Version choice by weight (smooth WRR) and instance choice by load: unit, property and over HTTP."""

from __future__ import annotations

import asyncio
from collections import Counter

from gwtools import Env, answered_by, service, table
from hypothesis import given
from hypothesis import strategies as st

from modelport.gateway.balance import Balancer, SmoothWRR
from modelport.gateway.routes import Endpoint


@given(weights=st.lists(st.integers(1, 100), min_size=1, max_size=8), rounds=st.integers(1, 3))
def test_smooth_wrr_is_exact_over_every_period(weights: list[int], rounds: int) -> None:
    wrr = SmoothWRR(weights)
    total = sum(weights)
    for _ in range(rounds):
        counts = Counter(wrr.pick() for _ in range(total))
        assert [counts[i] for i in range(len(weights))] == weights


@given(weights=st.lists(st.integers(1, 20), min_size=2, max_size=5))
def test_smooth_wrr_spreads_picks(weights: list[int]) -> None:
    # Smoothness: after any prefix of n picks, item i is never more than one pick off n*w_i/total.
    wrr = SmoothWRR(weights)
    total = sum(weights)
    counts = [0] * len(weights)
    for n in range(1, total + 1):
        counts[wrr.pick()] += 1
        for i, w in enumerate(weights):
            assert abs(counts[i] - n * w / total) < len(weights)


def _ep(name: str) -> Endpoint:
    return Endpoint(name, "127.0.0.1", 1)


def test_balancer_state_survives_table_updates_and_renormalises() -> None:
    bal = Balancer()
    routes = table(service("s", [("v1", 70, [_ep("a")]), ("v2", 30, [_ep("b")])]))
    bal.update(routes)
    picks = Counter()
    for i in range(100):
        if i % 7 == 0:  # a table push that changes nothing for this service keeps the WRR state
            bal.update(table(*routes.services.values(), revision=i + 2))
        picks[bal.pick(bal.plans["s"]).model_version] += 1  # type: ignore[union-attr]
    assert picks == {"v1": 70, "v2": 30}

    # A version without instances (or with weight 0) takes no part; the rest renormalise.
    bal.update(
        table(service("s", [("v1", 50, []), ("v2", 30, [_ep("b")]), ("v3", 20, [_ep("c")]), ("v4", 0, [_ep("d")])]))
    )
    picks = Counter(bal.pick(bal.plans["s"]).model_version for _ in range(50))  # type: ignore[union-attr]
    assert picks == {"v2": 30, "v3": 20}


def test_least_outstanding_with_round_robin_ties() -> None:
    bal = Balancer()
    bal.update(table(service("s", [("v1", 100, [_ep("a"), _ep("b"), _ep("c")])])))
    plan = bal.plans["s"]
    assert Counter(bal.pick(plan).instance_id for _ in range(30)) == {"a": 10, "b": 10, "c": 10}  # type: ignore[union-attr]
    busy = bal.pick(plan)
    assert busy is not None
    bal.enter(busy)
    others = {bal.pick(plan).instance_id for _ in range(10)}  # type: ignore[union-attr]
    assert busy.instance_id not in others and len(others) == 2
    bal.leave(busy)
    assert bal.load == {}


async def test_weights_70_30_over_1000_requests(env: Env) -> None:
    a, b = await env.upstream("a"), await env.upstream("b")
    client = await env.serve(table(service("s1", [("v1", 70, [a.endpoint]), ("v2", 30, [b.endpoint])])))
    versions = Counter()
    for _ in range(1000):
        r = await client.post("/v1/infers/s1", content=b"{}")
        assert r.status_code == 200
        versions[r.headers["x-modelport-version"]] += 1
    assert abs(versions["v1"] / 1000 - 0.70) <= 0.03, versions
    assert abs(versions["v2"] / 1000 - 0.30) <= 0.03, versions
    assert versions["v1"] + versions["v2"] == 1000


async def test_least_outstanding_picks_the_idle_instance(env: Env) -> None:
    a, b = await env.upstream("a"), await env.upstream("b")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint, b.endpoint])])))
    slow = asyncio.create_task(client.post("/v1/infers/s1/slow?s=1.5"))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if a.requests or b.requests:
            break
    busy = "a" if a.requests else "b"
    idle = "b" if busy == "a" else "a"
    assert env.gateway.inflight(busy) == 1
    answered = Counter([answered_by(await client.post("/v1/infers/s1")) for _ in range(10)])
    assert answered == {idle: 10}
    assert answered_by(await slow) == busy
    assert env.gateway.inflight(busy) == 0 and env.gateway.inflight(idle) == 0


async def test_endpoint_down_stops_routing_at_once(env: Env) -> None:
    a, b = await env.upstream("a"), await env.upstream("b")
    routes = table(service("s1", [("v1", 100, [a.endpoint, b.endpoint])]))
    client = await env.serve(routes)
    assert {answered_by(await client.post("/v1/infers/s1")) for _ in range(4)} == {"a", "b"}
    env.gateway.endpoint_down("a")
    assert {answered_by(await client.post("/v1/infers/s1")) for _ in range(10)} == {"b"}
    env.gateway.set_routes(table(*routes.services.values(), revision=2))  # still listed: still down
    assert {answered_by(await client.post("/v1/infers/s1")) for _ in range(10)} == {"b"}
    env.gateway.set_routes(table(service("s1", [("v1", 100, [b.endpoint])]), revision=3))
    env.gateway.set_routes(table(*routes.services.values(), revision=4))  # back, e.g. restarted
    assert {answered_by(await client.post("/v1/infers/s1")) for _ in range(4)} == {"a", "b"}
    env.gateway.endpoint_down("b")
    env.gateway.endpoint_down("a")
    r = await client.post("/v1/infers/s1")
    assert r.status_code == 503 and r.json()["error_code"] == "ModelArts.4302"
