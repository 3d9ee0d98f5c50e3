"""App authentication of predictions: AppCodes and AppKey/AppSecret signatures work only for bound services."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from tests.conftest import wait_until
from tests.security.conftest import World, deploy_probe, error_of

pytestmark = pytest.mark.slow


def call(w: World, service_id: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{w.url}/v1/infers/{service_id}", json={"a": 1}, headers=headers, timeout=30)


def test_app_code_only_for_bound_services(world: World) -> None:
    admin = world.admin()
    app = admin.create_app("coder")
    code = admin.add_app_code(app["app_id"])["app_code"]
    assert error_of(call(world, world.service_a, **{"X-Apig-AppCode": code})) == (403, "APIG.0304")
    admin.bind_app(app["app_id"], world.service_a)
    assert call(world, world.service_a, **{"X-Apig-AppCode": code}).status_code == 200
    # not bound to another service of the same project …
    other = deploy_probe(admin, "probe-unbound")
    assert error_of(call(world, other, **{"X-Apig-AppCode": code})) == (403, "APIG.0304")
    # … nor usable in another project
    assert error_of(call(world, world.service_b, **{"X-Apig-AppCode": code})) == (403, "APIG.0304")
    assert error_of(call(world, world.service_a, **{"X-Apig-AppCode": code + "x"})) == (401, "APIG.0303")
    # the app's listing never shows the code itself
    listed = admin.get_app(app["app_id"])
    assert code not in json.dumps(listed) and listed["services"] == [world.service_a]
    admin.unbind_app(app["app_id"], world.service_a)
    assert error_of(call(world, world.service_a, **{"X-Apig-AppCode": code})) == (403, "APIG.0304")
    admin.bind_app(app["app_id"], world.service_a)
    code_id = admin.get_app(app["app_id"])["app_codes"][0]["id"]
    admin.remove_app_code(app["app_id"], code_id)
    assert error_of(call(world, world.service_a, **{"X-Apig-AppCode": code})) == (401, "APIG.0303")
    admin.delete_service(other)


def test_app_key_signature(world: World) -> None:
    admin = world.admin()
    app = admin.create_app("signer")
    signed = world.signed(app["app_key"], app["app_secret"])
    assert error_of(signed.predict_raw(world.service_a, json={})) == (403, "APIG.0304")
    admin.bind_app(app["app_id"], world.service_a)
    assert signed.predict(world.service_a, {"x": 1})["bytes"] > 0
    wrong = world.signed(app["app_key"], app["app_secret"][:-1] + "0")
    assert error_of(wrong.predict_raw(world.service_a, json={})) == (401, "APIG.0303")
    # an AppKey is no key to the management API
    assert error_of(signed.request("GET", f"/v1/{world.project_a}/services")) == (401, "ModelArts.0206")
    admin.delete_app(app["app_id"])
    assert error_of(signed.predict_raw(world.service_a, json={})) == (401, "APIG.0301")


def test_apps_of_another_project_are_invisible(world: World) -> None:
    bea = world.client("bea", world.project_b)
    app = bea.create_app("b-app")
    admin = world.admin()
    assert "b-app" not in {a["name"] for a in admin.list_apps()}
    resp = admin.request("GET", f"/v1/{world.project_a}/apps/{app['app_id']}")
    assert error_of(resp) == (404, "MP.1434")
    # binding an app to a service of another project: not found
    path = f"/v1/{world.project_b}/apps/{app['app_id']}/bindings"
    resp = bea.request("POST", path, json={"service_id": world.service_a})
    assert error_of(resp) == (404, "ModelArts.3502")


def test_service_without_auth_is_explicit(world: World) -> None:
    admin = world.admin()
    sid = deploy_probe(admin, "probe-open", auth="none")
    assert admin.get_service(sid)["additional_properties"]["auth"] == "none"
    assert call(world, sid).status_code == 200
    assert error_of(call(world, world.service_a)) == (401, "ModelArts.0201")  # the default needs a credential
    admin.update_service(sid, {"additional_properties": {"auth": "default"}})
    wait_until(lambda: call(world, sid).status_code == 401, 10, what="auth back on")
    body = {"additional_properties": {"auth": "nobody"}}
    bad = admin.request("PUT", f"/v1/{world.project_a}/services/{sid}", json=body)
    assert error_of(bad) == (400, "ModelArts.0101")
    admin.delete_service(sid)


def test_app_cli(world: World) -> None:
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

    app = cli("app", "create", "cli-app")
    assert app["app_secret"]
    cli("app", "bind", "cli-app", "probe-a")
    code = cli("app", "codes", "add", "cli-app")
    assert call(world, world.service_a, **{"X-Apig-AppCode": code["app_code"]}).status_code == 200
    listed = cli("app", "list")
    assert any(a["name"] == "cli-app" and a["services"] == [world.service_a] for a in listed)
    cli("app", "codes", "remove", "cli-app", code["id"])
    cli("app", "unbind", "cli-app", "probe-a")
    cli("app", "delete", "cli-app")
    assert "cli-app" not in {a["name"] for a in world.admin().list_apps()}
