"""AK/SK signatures end to end: our signer against the management API and the gateway, and every way to break one."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from tests.security.conftest import World, error_of, probe_lines, sha

from modelport.auth import signing

pytestmark = pytest.mark.slow


def signed_headers(
    w: World, ak: str, sk: str, method: str, target: str, body: bytes, *, now: datetime | None = None, **extra: str
) -> dict[str, str]:
    path, _, query = target.partition("?")
    headers = {
        "Host": urlsplit(w.url).netloc,
        "Content-Type": "application/json",
        "X-Project-Id": w.project_a,
        **extra,
    }
    return {**headers, **signing.sign(ak, sk, method, path, query, headers, body, now=now)}


def send(w: World, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> httpx.Response:
    return httpx.request(method, w.url + target, headers=headers, content=body, timeout=30)


@pytest.fixture(scope="module")
def keys(world: World) -> tuple[str, str]:
    cred = world.admin().create_credential("signing tests")
    assert set(cred) >= {"access", "secret"} and len(cred["secret"]) >= 32
    return cred["access"], cred["secret"]


def test_own_signer_end_to_end_sdk(world: World, keys: tuple[str, str]) -> None:
    ak, sk = keys
    c = world.signed(ak, sk)
    assert any(s["service_id"] == world.service_a for s in c.list_services()["services"])
    assert c.predict(world.service_a, {"signed": True}, path="/sdk")["bytes"] > 0
    body = b'{"signed":  true, "spaces kept": 1}'
    resp = c.predict_raw(world.service_a, "/sdk", content=body, headers={"Content-Type": "application/json"})
    assert resp.json()["sha256"] == sha(body)  # the gateway forwarded the exact signed bytes
    # multipart bodies are signed over their raw bytes too
    resp = c.predict_raw(world.service_a, "/form", files={"images": ("a.bin", b"\x00\x01binary")})
    assert resp.status_code == 200, resp.text
    # the SK is never returned again
    listed = c.list_credentials()
    assert all("secret" not in k for k in listed) and ak in {k["access"] for k in listed}
    assert sk not in httpx.get(f"{world.url}/v3.0/OS-CREDENTIAL/credentials/{ak}", headers=_token(world)).text


def _token(world: World) -> dict[str, str]:
    return {"X-Auth-Token": world.admin().token()}


def test_cli_signs_with_env_keys(world: World, keys: tuple[str, str]) -> None:
    ak, sk = keys
    # A wrong password proves the CLI did not fall back to a token.
    env = {"MODELPORT_ACCESS_KEY": ak, "MODELPORT_SECRET_KEY": sk, "MODELPORT_PASSWORD": "wrong-on-purpose-1"}
    proc = subprocess.run(
        [sys.executable, "-m", "modelport.cli.main", "service", "list", "--json"],
        env={**world.p.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert world.service_a in proc.stdout


def test_management_api_signature_tampering(world: World, keys: tuple[str, str]) -> None:
    ak, sk = keys
    sid = world.service_a
    base = f"/v1/{world.project_a}/services"
    ok = send(world, "GET", f"{base}?limit=5", signed_headers(world, ak, sk, "GET", f"{base}?limit=5", b""))
    assert ok.status_code == 200, ok.text
    body = b'{"description": "signed update"}'
    put = signed_headers(world, ak, sk, "PUT", f"{base}/{sid}", body)
    assert send(world, "PUT", f"{base}/{sid}", put, body).status_code == 200

    app = world.admin().create_app("tamper-target")
    app_path = f"/v1/{world.project_a}/apps/{app['app_id']}"
    cases = {
        # signed GET of an app, sent as DELETE of it
        "method": ("DELETE", app_path, signed_headers(world, ak, sk, "GET", app_path, b""), b""),
        "path": ("GET", f"{base}/{sid}x", signed_headers(world, ak, sk, "GET", f"{base}/{sid}", b""), b""),
        "query": ("GET", f"{base}?limit=6", signed_headers(world, ak, sk, "GET", f"{base}?limit=5", b""), b""),
        "header": ("GET", base, {**signed_headers(world, ak, sk, "GET", base, b""), "X-Project-Id": "f" * 32}, b""),
        "body": ("PUT", f"{base}/{sid}", put, body.replace(b"signed", b"signee")),
        "date": (
            "GET",
            base,
            signed_headers(world, ak, sk, "GET", base, b"", now=datetime.now(UTC) - timedelta(minutes=16)),
            b"",
        ),
        "unknown key": ("GET", base, signed_headers(world, "MPUNKNOWN0000000000", sk, "GET", base, b""), b""),
        "wrong secret": ("GET", base, signed_headers(world, ak, sk + "x", "GET", base, b""), b""),
    }
    for what, (method, target, headers, data) in cases.items():
        resp = send(world, method, target, headers, data)
        assert error_of(resp) == (401, "ModelArts.0206"), (what, resp.text)
        assert resp.json()["request_id"]
        assert sk not in resp.text
    assert "expired" in send(world, *cases["date"][:3]).json()["error_msg"]
    world.admin().get_app(app["app_id"])  # the tampered DELETE did nothing


def _gateway_cases(world: World, ak: str, sk: str, marker: str) -> dict[str, tuple[str, str, dict[str, str], bytes]]:
    sid = world.service_a
    path = f"/v1/infers/{sid}/{marker}"
    body = json.dumps({"marker": marker}).encode()
    good = signed_headers(world, ak, sk, "POST", f"{path}?q=1", body)
    return {
        "ok": ("POST", f"{path}?q=1", good, body),
        "method": ("PUT", f"{path}?q=1", good, body),
        "path": ("POST", f"{path}-x?q=1", good, body),
        "query": ("POST", f"{path}?q=2", good, body),
        "header": ("POST", f"{path}?q=1", {**good, "Content-Type": "text/plain"}, body),
        "body": ("POST", f"{path}?q=1", good, body[:-2] + b"x}"),
        "date": (
            "POST",
            f"{path}?q=1",
            signed_headers(world, ak, sk, "POST", f"{path}?q=1", body, now=datetime.now(UTC) + timedelta(minutes=16)),
            body,
        ),
        "unknown key": (
            "POST",
            f"{path}?q=1",
            signed_headers(world, "MPNOSUCHKEY00000000", sk, "POST", f"{path}?q=1", body),
            body,
        ),
    }


def test_gateway_signature_tampering(world: World, keys: tuple[str, str]) -> None:
    ak, sk = keys
    marker = "gw-tamper"
    cases = _gateway_cases(world, ak, sk, marker)
    method, target, headers, body = cases.pop("ok")
    ok = send(world, method, target, headers, body)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"bytes": len(body), "sha256": sha(body)}
    for what, (method, target, headers, data) in cases.items():
        resp = send(world, method, target, headers, data)
        assert error_of(resp) == (401, "APIG.0301"), (what, resp.text)
        assert resp.headers["x-request-id"] == resp.json()["request_id"]
    seen = [line for line in probe_lines(world.admin(), world.service_a) if marker in line]
    assert len(seen) == 1, seen  # only the untampered request reached the model


def test_unsigned_payload_and_chunked_body(world: World, keys: tuple[str, str]) -> None:
    ak, sk = keys
    target = f"/v1/infers/{world.service_a}/unsigned"
    headers = signed_headers(world, ak, sk, "POST", target, b"", **{"X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"})
    resp = send(world, "POST", target, headers, b'{"any": "body"}')
    assert resp.status_code == 200, resp.text
    # A signed chunked upload is buffered (up to the limit), hashed, and forwarded as the same bytes.
    body = b"x" * 300_000
    signed = signed_headers(world, ak, sk, "POST", target, body)

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    resp = httpx.post(world.url + target, headers=signed, content=chunks(), timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["sha256"] == sha(body)


def test_deleted_key_and_roles(world: World) -> None:
    admin = world.admin()
    victor = world.client("victor", world.project_a)
    cred = victor.create_credential("victor's")
    signed = world.signed(cred["access"], cred["secret"])
    assert signed.list_services()["count"] >= 1  # a viewer may read …
    assert signed.predict(world.service_a, {"v": 1})["bytes"] > 0  # … and predict
    resp = signed.request("POST", f"/v1/{world.project_a}/apps", json={"name": "by-viewer"})
    assert error_of(resp) == (403, "ModelArts.0108")  # … but not create
    # another project through the path: 0210; through the gateway: 0210
    other = signed.request("GET", f"/v1/{world.project_b}/services")
    assert error_of(other) == (403, "ModelArts.0210")
    assert error_of(signed.predict_raw(world.service_b, json={})) == (403, "ModelArts.0210")
    # an administrator cannot see victor's keys' secrets either; victor deletes the key
    assert all("secret" not in k for k in admin.list_credentials(world.users["victor"]))
    victor.delete_credential(cred["access"])
    gone = signed.request("GET", f"/v1/{world.project_a}/services")
    assert error_of(gone) == (401, "ModelArts.0206")
    assert error_of(signed.predict_raw(world.service_a, json={})) == (401, "APIG.0301")
