"""Projects and permissions: roles map to the spec's actions, and project A sees nothing of project B on any route."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from tests.security.conftest import PASSWORD, World, error_of, token_for

pytestmark = pytest.mark.slow

_PARAM = re.compile(r"\{(\w+)\}")
# Valid bodies (by the path's last segment), so that only authorisation can refuse the request.
_BODIES = {
    "bindings": {"service_id": "placeholder"},
    "password": {"user": {"password": "a password of the right length"}},
    "app-codes": {},
}


@pytest.fixture(scope="module")
def b_side(world: World) -> dict[str, str]:
    """Resources of project B, by the path parameter names that address them."""
    bea = world.client("bea", world.project_b)
    app = bea.create_app("b-secret-app")
    code = bea.add_app_code(app["app_id"])
    cred = bea.create_credential("bea's key")
    model_id = bea.list_models()["models"][0]["model_id"]
    return {
        "service_id": world.service_b,
        "service_ids": world.service_b,
        "model_id": model_id,
        "app_id": app["app_id"],
        "code_id": code["id"],
        "user_id": world.users["bea"],
        "access_key": cred["access"],
        "role": "viewer",
        "_ak_secret": cred["secret"],
        "_app_code": code["app_code"],
    }


def _routes(world: World) -> list[tuple[str, str]]:
    schema = httpx.get(f"{world.url}/openapi.json").json()
    out = []
    for path, item in schema["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                out.append((method.upper(), path))
    return out


def test_cross_project_denied_on_every_route(world: World, b_side: dict[str, str]) -> None:
    token = world.token("alice", world.project_a)
    headers = {"X-Auth-Token": token}
    routes = _routes(world)
    assert len(routes) >= 30  # the loop covers the whole API, not a hand-picked part
    checked = 0
    for method, template in routes:
        params = _PARAM.findall(template)
        if not params:
            continue
        variants = []
        if "project_id" in params:
            # B's project in the path: "not your project"
            variants.append(({**b_side, "project_id": world.project_b}, (403, "ModelArts.0210")))
            if len(params) > 1 and template.startswith("/v1/"):
                # your own project in the path, B's resource ids: "not found"
                variants.append(({**b_side, "project_id": world.project_a}, (404, None)))
        else:
            variants.append((b_side, None))
        for values, expected in variants:
            url = world.url + _PARAM.sub(lambda m, v=values: v[m.group(1)], template)
            body = _BODIES.get(template.rsplit("/", 1)[-1], {"description": "cross-project"})
            resp = httpx.request(method, url, headers=headers, json=body if method in ("POST", "PUT") else None)
            status, code = error_of(resp)
            assert status in (403, 404), (method, template, resp.status_code, resp.text)
            assert code, (method, template, resp.text)
            if expected is not None:
                assert status == expected[0] and (expected[1] is None or code == expected[1]), (
                    method,
                    template,
                    resp.text,
                )
            for secret in (b_side["_ak_secret"], b_side["_app_code"]):
                assert secret not in resp.text
            checked += 1
    assert checked >= 25
    # the listings of A show nothing of B
    alice = world.client("alice", world.project_a)
    assert world.service_b not in {s["service_id"] for s in alice.list_services()["services"]}
    assert b_side["model_id"] not in {m["model_id"] for m in alice.list_models()["models"]}
    assert b_side["app_id"] not in {a["app_id"] for a in alice.list_apps()}
    assert world.project_b not in {p["id"] for p in alice.list_projects()}
    assert {u["name"] for u in alice.list_users()} == {"alice"}
    others = alice.request("GET", "/v3.0/OS-CREDENTIAL/credentials", params={"user_id": b_side["user_id"]})
    assert error_of(others) == (403, "ModelArts.0108")
    # predictions: a token of A cannot call B's service, nor can B's key reach A's
    assert error_of(alice.predict_raw(world.service_b, json={})) == (403, "ModelArts.0210")
    # nothing of B was changed by the loop
    bea = world.client("bea", world.project_b)
    assert bea.get_service(world.service_b)["status"] == "running"
    assert bea.get_app(b_side["app_id"])["app_codes"]
    assert {k["access"] for k in bea.list_credentials()} >= {b_side["access_key"]}


def test_roles_map_to_actions(world: World) -> None:
    victor = world.client("victor", world.project_a)
    sid = world.service_a
    assert victor.get_service(sid)["service_id"] == sid
    assert victor.events(sid)["count"] >= 1 and "instance_logs" in victor.logs(sid)
    assert victor.predict(sid, {"ok": 1})["bytes"] > 0
    base = f"/v1/{world.project_a}"
    denied = [
        ("PUT", f"{base}/services/{sid}", {"description": "viewer edit"}, "modelarts:service:update"),
        ("PUT", f"{base}/services/{sid}", {"status": "stopped"}, "modelarts:service:action"),
        ("DELETE", f"{base}/services/{sid}", None, "modelarts:service:delete"),
        ("POST", f"{base}/services", {"service_name": "x", "infer_type": "real-time", "config": []}, None),
        ("POST", f"{base}/apps", {"name": "viewer-app"}, "modelarts:app:create"),
    ]
    for method, path, body, action in denied:
        resp = victor.request(method, path, json=body)
        assert error_of(resp) == (403, "ModelArts.0108"), (method, path, resp.text)
        if action:
            assert action in resp.json()["error_msg"]
    alice = world.client("alice", world.project_a)
    alice.update_service(sid, {"description": "developer edit"})
    resp = alice.request("PUT", f"/v3/projects/{world.project_a}/users/{world.users['victor']}/roles/admin")
    assert error_of(resp) == (403, "ModelArts.0108")  # developers do not manage members
    resp = alice.request("POST", "/v3/users", json={"user": {"name": "mallory", "password": "p" * 12}})
    assert error_of(resp) == (403, "ModelArts.0108")  # nor users


def test_token_revocation_on_password_change_and_delete(world: World) -> None:
    admin = world.admin()
    user = admin.create_user("tmpuser", PASSWORD)
    admin.add_member(world.project_a, user["id"], "developer")
    first = token_for(world.url, "tmpuser", PASSWORD, world.project_a).headers["X-Subject-Token"]
    api = f"{world.url}/v1/{world.project_a}/services"
    gw = f"{world.url}/v1/infers/{world.service_a}"
    assert httpx.get(api, headers={"X-Auth-Token": first}).status_code == 200
    assert httpx.post(gw, json={}, headers={"X-Auth-Token": first}).status_code == 200
    tmp = world.client("tmpuser", world.project_a)
    cred = tmp.create_credential()
    tmp.change_password(user["id"], "a new password!", PASSWORD)
    assert error_of(httpx.get(api, headers={"X-Auth-Token": first})) == (401, "ModelArts.0203")
    assert error_of(httpx.post(gw, json={}, headers={"X-Auth-Token": first})) == (401, "ModelArts.0203")
    second = token_for(world.url, "tmpuser", "a new password!", world.project_a).headers["X-Subject-Token"]
    assert httpx.get(api, headers={"X-Auth-Token": second}).status_code == 200
    # removed from the project: the token no longer reaches it
    admin.remove_member(world.project_a, user["id"])
    assert error_of(httpx.get(api, headers={"X-Auth-Token": second})) == (403, "ModelArts.0210")
    assert error_of(httpx.post(gw, json={}, headers={"X-Auth-Token": second})) == (403, "ModelArts.0210")
    admin.add_member(world.project_a, user["id"], "viewer")
    assert httpx.get(api, headers={"X-Auth-Token": second}).status_code == 200
    admin.delete_user(user["id"])
    assert error_of(httpx.get(api, headers={"X-Auth-Token": second})) == (401, "ModelArts.0203")
    assert error_of(httpx.post(gw, json={}, headers={"X-Auth-Token": second})) == (401, "ModelArts.0203")
    signed = world.signed(cred["access"], cred["secret"])
    assert error_of(signed.request("GET", f"/v1/{world.project_a}/services")) == (401, "ModelArts.0206")
    assert token_for(world.url, "tmpuser", "a new password!", world.project_a).status_code == 401


def test_login_throttling(world: World) -> None:
    admin = world.admin()
    admin.create_user("guessme", PASSWORD)
    admin.add_member(world.project_a, admin.find_user("guessme")["id"], "viewer")
    for _ in range(5):
        assert error_of(token_for(world.url, "guessme", "wrong password", world.project_a)) == (401, "MP.0401")
    locked = token_for(world.url, "guessme", PASSWORD, world.project_a)  # even the right one, while locked
    assert error_of(locked) == (429, "MP.0429")
    assert int(locked.headers["Retry-After"]) >= 1 and locked.json()["request_id"]
    assert error_of(token_for(world.url, "guessme", "wrong again", world.project_a)) == (429, "MP.0429")
    time.sleep(int(locked.headers["Retry-After"]) + 0.2)
    assert token_for(world.url, "guessme", PASSWORD, world.project_a).status_code == 201
    # other users (and other addresses) are not locked by it
    assert token_for(world.url, "victor", PASSWORD, world.project_a).status_code == 201


def test_user_and_project_cli(world: World) -> None:
    import json
    import subprocess
    import sys

    def cli(*args: str) -> dict | list:
        proc = subprocess.run(
            [sys.executable, "-m", "modelport.cli.main", *args, "--json"],
            env=world.p.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    cli("user", "create", "cliuser", "--password", "cli password 1")
    project = cli("project", "create", "cli-project")
    cli("project", "add-member", "cli-project", "cliuser", "--role", "developer")
    members = cli("project", "members", "cli-project")
    assert {m["name"]: m["role"] for m in members} == {"admin": "admin", "cliuser": "developer"}
    assert token_for(world.url, "cliuser", "cli password 1", project["id"]).status_code == 201
    cli("user", "password", "cliuser", "--password", "cli password 2")
    assert token_for(world.url, "cliuser", "cli password 2", project["id"]).status_code == 201
    cli("project", "remove-member", "cli-project", "cliuser")
    cli("user", "delete", "cliuser")
    assert "cliuser" not in {u["name"] for u in cli("user", "list")}  # type: ignore[union-attr]
