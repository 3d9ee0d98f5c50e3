"""Gateway over real HTTP: routing, rewriting, headers, auth, service states, error bodies, stats."""

from __future__ import annotations

import json
import re

from gwtools import OTHER_PROJECT, PROJECT, Env, error_of, service, table
from prometheus_client import REGISTRY


async def test_path_query_method_and_headers_are_rewritten(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    resp = await client.put(
        "/v1/infers/s1/predict/b%20c/?x=1&y=%2F",
        content=b'{"k": 2}',
        headers={
            "X-Request-Id": "client-req-1",
            "X-Custom": "v",
            "Proxy-Authorization": "Basic eA==",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
        },
    )
    assert resp.status_code == 200
    seen = resp.json()
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == "/predict/b%20c/?x=1&y=%2F"
    headers = seen["headers"]
    assert "x-auth-token" not in headers  # a secret: never reaches a model
    assert "proxy-authorization" not in headers  # hop-by-hop
    assert "x-hop" not in headers  # declared hop-by-hop by the client's Connection header
    assert headers["x-custom"] == "v"
    assert headers["x-request-id"] == "client-req-1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{env.server.port}"  # type: ignore[union-attr]
    assert headers["host"] == f"127.0.0.1:{a.port}"
    assert seen["body_len"] == 8
    assert resp.headers["x-request-id"] == "client-req-1"
    assert resp.headers["x-modelport-version"] == "v1"
    assert resp.headers["x-modelport-instance"] == "a"
    assert resp.headers["x-upstream"] == "a"

    for url, want in [("/v1/infers/s1", "/"), ("/v1/infers/s1?q=%20", "/?q=%20"), ("/v1/infers/s1/", "/")]:
        r = await client.get(url)
        assert r.status_code == 200 and r.json()["raw_path"] == want, (url, r.text)


async def test_methods_pass_through_and_head_has_no_body(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    for method in ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]:
        r = await client.request(method, "/v1/infers/s1/m")
        assert r.status_code == 200 and r.json()["method"] == method
    r = await client.head("/v1/infers/s1/m")
    assert r.status_code == 200 and r.content == b""
    r = await client.get("/v1/infers/s1/after-head")  # the connection that carried HEAD is not misused
    assert r.json()["raw_path"] == "/after-head"


async def test_request_id_is_generated_when_absent_or_insane(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    for sent in [None, "has space", "x" * 300, "<script>"]:
        r = await client.post("/v1/infers/s1", headers={"X-Request-Id": sent} if sent else {})
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        assert r.json()["headers"]["x-request-id"] == rid


async def test_authentication_errors_have_codes(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    expired, _ = env.tokens.issue("u1", "alice", PROJECT, now=1_000_000.0)
    other, _ = env.tokens.issue("u2", "bob", OTHER_PROJECT)
    cases = [
        ({"X-Auth-Token": ""}, 401, "ModelArts.0201"),
        ({"X-Auth-Token": "MPT1.garbage.sig"}, 401, "ModelArts.0203"),
        ({"X-Auth-Token": env.token[:-2] + "AA"}, 401, "ModelArts.0203"),
        ({"X-Auth-Token": expired}, 401, "ModelArts.0202"),
        ({"X-Auth-Token": other}, 403, "ModelArts.0210"),
    ]
    for headers, status, code in cases:
        r = await client.post("/v1/infers/s1", headers=headers)
        assert r.status_code == status, (headers, r.text)
        assert error_of(r) == code
        assert PROJECT not in r.text  # nothing about the service's project leaks
    r = await env.anon.post("/v1/infers/s1")  # type: ignore[union-attr]
    assert r.status_code == 401 and error_of(r) == "ModelArts.0201"
    assert a.requests == []


async def test_open_service_needs_no_token_and_token_is_still_stripped(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("open", [("v1", 100, [a.endpoint])], auth_required=False)))
    r = await env.anon.post("/v1/infers/open")  # type: ignore[union-attr]
    assert r.status_code == 200
    r = await client.post("/v1/infers/open")
    assert r.status_code == 200 and "x-auth-token" not in r.json()["headers"]


async def test_service_states(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(
        table(
            service("stopped", [("v1", 100, [a.endpoint])], status="stopped"),
            service("deploying-empty", [("v1", 100, [])], status="deploying"),
            service("deploying-ready", [("v1", 100, [a.endpoint])], status="deploying"),
            service("running-empty", [("v1", 100, [])]),
            service("concerning", [("v1", 100, [a.endpoint])], status="concerning"),
        )
    )
    cases = [
        ("/v1/infers/nope/x", 404, "ModelArts.4201"),
        ("/v1/infers/", 400, "ModelArts.4201"),
        ("/v1/infers/stopped", 503, "ModelArts.4203"),
        ("/v1/infers/deploying-empty", 503, "ModelArts.4203"),
        ("/v1/infers/running-empty", 503, "ModelArts.4302"),
    ]
    for url, status, code in cases:
        r = await client.post(url)
        assert r.status_code == status, (url, r.text)
        assert error_of(r) == code
        assert r.headers["content-type"] == "application/json"
    assert a.requests == []
    # Without a valid credential nobody learns whether a service id exists.
    r = await env.anon.post("/v1/infers/nope")  # type: ignore[union-attr]
    assert r.status_code == 401 and error_of(r) == "ModelArts.0201"
    r = await client.post("/v1/infers/nope", headers={"X-Auth-Token": "MPT1.forged.sig"})
    assert r.status_code == 401 and error_of(r) == "ModelArts.0203"
    for url in ["/v1/infers/deploying-ready", "/v1/infers/concerning"]:
        assert (await client.post(url)).status_code == 200


async def test_model_errors_pass_through_untouched(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))
    for code in [400, 404, 422, 500, 503]:
        r = await client.post(f"/v1/infers/s1/status/{code}", headers={"X-Request-Id": f"rid-{code}"})
        assert r.status_code == code
        assert r.content == b'{"erno": "MR.0105", "msg": "model says no"}'
        assert "error_code" not in json.loads(r.content)
        assert r.headers["x-model-header"] == "kept"
        assert r.headers["x-request-id"] == f"rid-{code}"
        assert r.headers["x-modelport-instance"] == "a"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_take_stats_and_metrics(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(
        table(
            service("stats-1", [("v7", 100, [a.endpoint])]),
            service("stats-2", [("v1", 100, [a.endpoint])], status="stopped"),
        )
    )
    before_ok = _sample("modelport_gateway_requests_total", service_id="stats-1", model_version="v7", code="200")
    before_err = _sample("modelport_gateway_errors_total", service_id="stats-2", error_code="ModelArts.4203")
    assert env.gateway.take_stats() == {}
    for path in ["", "", "", "/status/500", "/status/404"]:
        await client.post(f"/v1/infers/stats-1{path}")
    await client.post("/v1/infers/stats-2")
    await client.post("/v1/infers/stats-1", headers={"X-Auth-Token": "bad"})
    await client.post("/v1/infers/unknown")  # not a service: nothing to persist
    # invocations, failures (platform errors + model 5xx; a model 4xx is not a failure)
    assert env.gateway.take_stats() == {"stats-1": (6, 2), "stats-2": (1, 1)}
    assert env.gateway.take_stats() == {}
    await client.post("/v1/infers/stats-1")
    assert env.gateway.take_stats() == {"stats-1": (1, 0)}

    ok = _sample("modelport_gateway_requests_total", service_id="stats-1", model_version="v7", code="200")
    assert ok - before_ok == 4
    err = _sample("modelport_gateway_errors_total", service_id="stats-2", error_code="ModelArts.4203")
    assert err - before_err == 1
    assert _sample("modelport_gateway_request_duration_seconds_count", service_id="stats-1", model_version="v7") >= 5
    assert _sample("modelport_gateway_inflight", service_id="stats-1") == 0


async def test_a_gateway_bug_still_answers_in_the_platform_format(env: Env) -> None:
    a = await env.upstream("a")
    client = await env.serve(table(service("s1", [("v1", 100, [a.endpoint])])))

    def broken_pick(*args: object, **kw: object) -> None:
        raise RuntimeError("boom")

    env.gateway._balancer.pick = broken_pick  # type: ignore[method-assign]
    r = await client.post("/v1/infers/s1", headers={"X-Request-Id": "rid-bug"})
    assert r.status_code == 500 and error_of(r) == "ModelArts.0010"
    assert "rid-bug" in r.json()["error_msg"]
    assert env.gateway.take_stats() == {"s1": (1, 1)}
