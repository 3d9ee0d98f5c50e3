"""Authentication from day one: credentials file, tokens, 401/403 with codes on API and gateway."""

from __future__ import annotations

import stat

import httpx
from tests.conftest import PlatformProc


def _token(p: PlatformProc, user: str, password: str, project: dict | None = None) -> httpx.Response:
    body: dict = {
        "auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "password": password}}}}
    }
    if project:
        body["auth"]["scope"] = {"project": project}
    return httpx.post(f"{p.url}/v3/auth/tokens", json=body)


def test_credentials_file_is_private_and_complete(shared_platform: PlatformProc) -> None:
    path = shared_platform.home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = shared_platform.creds()
    assert set(creds) >= {"api_url", "project_id", "username", "password"}
    assert creds["api_url"] == shared_platform.url


def test_token_issue_and_use(shared_platform: PlatformProc) -> None:
    creds = shared_platform.creds()
    resp = _token(shared_platform, creds["username"], creds["password"], {"id": creds["project_id"]})
    assert resp.status_code == 201
    token = resp.headers["X-Subject-Token"]
    assert resp.json()["token"]["project"]["id"] == creds["project_id"]
    ok = httpx.get(f"{shared_platform.url}/v1/{creds['project_id']}/services", headers={"X-Auth-Token": token})
    assert ok.status_code == 200
    # the token never appears in the platform's own log
    assert token not in shared_platform.log.read_text()


def test_wrong_password(shared_platform: PlatformProc) -> None:
    creds = shared_platform.creds()
    resp = _token(shared_platform, creds["username"], "wrong")
    assert resp.status_code == 401
    assert resp.json()["error_code"] == "MP.0401"
    assert "wrong" not in resp.text.replace("Wrong", "")


def test_api_rejects_missing_bad_and_foreign_tokens(shared_platform: PlatformProc) -> None:
    creds = shared_platform.creds()
    base = f"{shared_platform.url}/v1/{creds['project_id']}/services"
    cases = [({}, 401, "ModelArts.0201"), ({"X-Auth-Token": "garbage"}, 401, "ModelArts.0203")]
    forged = "MPT1.eyJ1IjoieCJ9.AAAA"
    cases.append(({"X-Auth-Token": forged}, 401, "ModelArts.0203"))
    for headers, status, code in cases:
        resp = httpx.get(base, headers=headers)
        assert resp.status_code == status, resp.text
        assert resp.json()["error_code"] == code
    token = _token(shared_platform, creds["username"], creds["password"]).headers["X-Subject-Token"]
    other = httpx.get(f"{shared_platform.url}/v1/{'f' * 32}/services", headers={"X-Auth-Token": token})
    assert other.status_code == 403
    assert other.json()["error_code"] == "ModelArts.0210"


def test_gateway_requires_token(shared_platform: PlatformProc) -> None:
    resp = httpx.post(f"{shared_platform.url}/v1/infers/whatever", json={})
    assert resp.status_code == 401
    assert resp.json()["error_code"] == "ModelArts.0201"
    assert resp.headers.get("x-request-id")
