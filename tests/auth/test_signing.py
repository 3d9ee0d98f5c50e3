"""SDK-HMAC-SHA256: the official SDK's vectors, our signer against our verifier, and every tamper."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.auth import signing
from modelport.auth.signing import SignatureError

HEADERS = {
    "content-type": "application/json",
    "user-agent": "huaweicloud-usdk-python/3.0; test-agent",
    "x-project-id": "0123456789abcdef0123456789abcdef",
    "host": "127.0.0.1:18080",
}
P = "/v2/0123456789abcdef0123456789abcdef/services"
# (ak, sk, method, path, query as sent, content-type, date, body, signature) from shared/reference
VECTORS = [
    (
        "HPUAEXAMPLEAK000001", "exampleSecretKey0000000000000000000000001", "GET", P,
        "offset=0&name=demo%20svc&limit=10", "application/json", "20240101T000000Z", b"",
        "4f7f9af8ca20cb1afc72a252bf80684c60abdf8570956ce51f10efcc38c935a5",
    ),
    (
        "HPUAEXAMPLEAK000002", "exampleSecretKey0000000000000000000000002", "POST", P + "/svc-0001/deployments",
        "", "application/json;charset=utf-8", "20240615T123045Z", b'{"name": "dep-b", "weight": 30, "count": 1}',
        "795de982eb39dcae16aae92ef702a218318fd3a238c010835ca357928d709d8c",
    ),
    (
        "HPUAEXAMPLEAK000003", "exampleSecretKey0000000000000000000000003", "GET",
        P + "/svc-0001/deployments/%E9%83%A8%E7%BD%B2%201/instances",
        "status=RUNNING&status=DEPLOYING&instance_name=%E6%A8%A1%E5%9E%8B%2F1&limit=5",
        "application/json", "20241231T235959Z", b"",
        "379685caea5b4d1d30880b4fe477c4fefe6a5e4e84947408afde378d34ed32e9",
    ),
]  # fmt: skip
SIGNED = "content-type;host;user-agent;x-project-id;x-sdk-date"


def _headers(ak: str, ctype: str, date: str, sig: str) -> dict[str, str]:
    return {
        **HEADERS,
        "content-type": ctype,
        "x-sdk-date": date,
        "authorization": f"SDK-HMAC-SHA256 Access={ak}, SignedHeaders={SIGNED}, Signature={sig}",
    }


def _at(date: str) -> datetime:
    return datetime.strptime(date, signing.DATE_FORMAT).replace(tzinfo=UTC)


def test_canonical_request_of_vector_1_exactly() -> None:
    headers = {**HEADERS, "x-sdk-date": "20240101T000000Z"}
    canon = signing.canonical_request(
        "GET", P, "offset=0&name=demo%20svc&limit=10", headers, tuple(SIGNED.split(";")), signing.EMPTY_SHA256
    )
    assert canon == (
        "GET\n/v2/0123456789abcdef0123456789abcdef/services/\nlimit=10&name=demo%20svc&offset=0\n"
        "content-type:application/json\nhost:127.0.0.1:18080\nuser-agent:huaweicloud-usdk-python/3.0; test-agent\n"
        "x-project-id:0123456789abcdef0123456789abcdef\nx-sdk-date:20240101T000000Z\n\n"
        f"{SIGNED}\n{signing.EMPTY_SHA256}"
    )
    digest = hashlib.sha256(canon.encode()).hexdigest()
    assert digest == "531732fba712f19bd02b6ad297f84dce5b56b41713ad78d603444241f5f68af2"


@pytest.mark.parametrize("vector", VECTORS, ids=["v1", "v2", "v3"])
def test_verifier_accepts_the_official_vectors(vector: tuple) -> None:
    ak, sk, method, path, query, ctype, date, body, sig = vector
    headers = _headers(ak, ctype, date, sig)
    got = signing.verify(method, path, query, headers, hashlib.sha256(body).hexdigest(), {ak: sk}.get, _at(date))
    assert got == ak


@pytest.mark.parametrize("vector", VECTORS, ids=["v1", "v2", "v3"])
def test_our_signer_reproduces_the_vectors(vector: tuple) -> None:
    ak, sk, method, path, query, ctype, date, body, sig = vector
    send = {
        "Content-Type": ctype,
        "User-Agent": HEADERS["user-agent"],
        "X-Project-Id": HEADERS["x-project-id"],
    }
    send |= {"Host": HEADERS["host"], "X-Sdk-Date": date}
    out = signing.sign(ak, sk, method, path, query, send, body)
    assert out["Authorization"].endswith(f"Signature={sig}")


TAMPERS = {
    "method": lambda r: {**r, "method": "DELETE"},
    "path": lambda r: {**r, "path": r["path"] + "x"},
    "query": lambda r: {**r, "query": "limit=11&name=demo%20svc&offset=0"},
    "signed header": lambda r: {**r, "headers": {**r["headers"], "x-project-id": "f" * 32}},
    "body byte": lambda r: {**r, "body": b"{" + r["body"][1:] + b" "},
    "date 16 min off": lambda r: {**r, "now": r["now"] + timedelta(minutes=16)},
    "unknown AK": lambda r: {**r, "secrets": {}},
}


@pytest.mark.parametrize("name", list(TAMPERS))
def test_any_change_to_a_signed_part_is_refused(name: str) -> None:
    ak, sk, method, path, _query, ctype, date, body, sig = VECTORS[1]
    req = {"method": method, "path": path, "query": "", "headers": _headers(ak, ctype, date, sig), "body": body,
           "now": _at(date), "secrets": {ak: sk}}  # fmt: skip
    if name == "query":
        req["query"] = "a=1"
    req = TAMPERS[name](req)
    with pytest.raises(SignatureError) as info:
        body_hash = hashlib.sha256(req["body"]).hexdigest()
        signing.verify(
            req["method"], req["path"], req["query"], req["headers"], body_hash, req["secrets"].get, req["now"]
        )
    expected_kind = {"date 16 min off": "expired", "unknown AK": "unknown_key"}.get(name, "invalid")
    assert info.value.kind == expected_kind
    assert "exampleSecretKey" not in str(info.value)


def test_unsigned_payload_is_honoured_and_host_and_date_are_required() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    send = {"Host": "h:1", "Content-Type": "text/plain", "X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"}
    out = signing.sign("AK", "SK", "PUT", "/a/b", "", send, b"anything", now=now)
    headers = {k.lower(): v for k, v in {**send, **out}.items()}
    assert signing.verify("PUT", "/a/b", "", headers, "ignored", {"AK": "SK"}.get, now) == "AK"
    weak = headers | {"authorization": headers["authorization"].replace("content-type;host;", "content-type;")}
    with pytest.raises(SignatureError, match="host"):
        signing.verify("PUT", "/a/b", "", weak, "ignored", {"AK": "SK"}.get, now)


segment = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(segment, min_size=1, max_size=4),
    params=st.lists(st.tuples(segment, segment), max_size=4),
    body=st.binary(max_size=64),
)
def test_sign_then_verify_round_trips_any_path_query_and_body(segments, params, body) -> None:  # type: ignore[no-untyped-def]
    from urllib.parse import quote

    path = "/" + "/".join(quote(s, safe="") for s in segments)
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    now = datetime(2025, 6, 1, tzinfo=UTC)
    send = {"Host": "127.0.0.1:8000", "Content-Type": "application/octet-stream"}
    out = signing.sign("AK1", "secret", "POST", path, query, send, body, now=now)
    headers = {k.lower(): v for k, v in {**send, **out}.items()}
    assert signing.verify("POST", path, query, headers, hashlib.sha256(body).hexdigest(), {"AK1": "secret"}.get, now)
