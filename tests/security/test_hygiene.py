"""Secrets never leak: after every path that handles an SK, app secret, AppCode, token or password, none of
them is in the platform log, in any event, in any error message, or in the store in plaintext."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from tests.security.conftest import PASSWORD, World, token_for

pytestmark = pytest.mark.slow


def test_no_secret_in_logs_events_or_errors(world: World) -> None:
    admin = world.admin()
    secrets: list[str] = []
    responses: list[httpx.Response] = []

    # users and passwords: creation, wrong logins, a change
    user_pw = "Hygiene-Password-123"
    user = admin.create_user("hygiene", user_pw)
    admin.add_member(world.project_a, user["id"], "developer")
    secrets += [user_pw, "Wrong-Hygiene-Pass-9", "Another-Hygiene-77"]
    responses.append(token_for(world.url, "hygiene", "Wrong-Hygiene-Pass-9", world.project_a))
    me = world.client("hygiene", world.project_a, user_pw)
    token = me.token()
    secrets.append(token)
    me.change_password(user["id"], "Another-Hygiene-77", user_pw)
    responses.append(httpx.get(f"{world.url}/v1/{world.project_a}/services", headers={"X-Auth-Token": token}))
    responses.append(httpx.post(f"{world.url}/v1/infers/{world.service_a}", headers={"X-Auth-Token": token}))
    resp = httpx.post(
        f"{world.url}/v3/users/{user['id']}/password",
        json={"user": {"password": "short", "original_password": "Another-Hygiene-77"}},
        headers={"X-Auth-Token": world.token("hygiene", world.project_a, "Another-Hygiene-77")},
    )
    responses.append(resp)

    # AK/SK: create, use right and wrong, delete
    me = world.client("hygiene", world.project_a, "Another-Hygiene-77")
    cred = me.create_credential()
    secrets.append(cred["secret"])
    signed = world.signed(cred["access"], cred["secret"])
    signed.list_services()
    signed.predict(world.service_a, {"x": 1})
    wrong = world.signed(cred["access"], cred["secret"][::-1])
    responses.append(wrong.request("GET", f"/v1/{world.project_a}/services"))
    responses.append(wrong.predict_raw(world.service_a, json={}))

    # apps: secret and codes, used right and wrong
    app = me.create_app("hygiene-app")
    secrets.append(app["app_secret"])
    code = me.add_app_code(app["app_id"])["app_code"]
    secrets.append(code)
    responses.append(httpx.post(f"{world.url}/v1/infers/{world.service_a}", headers={"X-Apig-AppCode": code}))
    me.bind_app(app["app_id"], world.service_a)
    httpx.post(f"{world.url}/v1/infers/{world.service_a}", headers={"X-Apig-AppCode": code}).raise_for_status()
    app_signed = world.signed(app["app_key"], app["app_secret"])
    app_signed.predict(world.service_a, {"y": 2})
    responses.append(world.signed(app["app_key"], app["app_secret"] + "x").predict_raw(world.service_a, json={}))
    me.delete_credential(cred["access"])
    responses.append(signed.request("GET", f"/v1/{world.project_a}/services"))
    admin.delete_user(user["id"])

    for resp in responses:
        assert resp.status_code >= 400 and resp.json()["request_id"], resp.text
        for secret in secrets:
            assert secret not in resp.text

    log = world.p.log.read_text()  # type: ignore[union-attr]
    events = []
    for who in (admin, world.client("bea", world.project_b)):
        for svc in who.list_services()["services"]:
            events += [e["event_info"] for e in who.events(svc["service_id"])["events"]]
            events += [e["message"] for e in who.logs(svc["service_id"], tail=10000)["instance_logs"]]
    assert events
    for secret in [*secrets, PASSWORD, world.p.creds()["password"]]:
        assert secret not in log, "a secret is in the platform log"
        assert not any(secret in e for e in events), "a secret is in an event or instance log"

    # at rest: SKs and app secrets sealed, AppCodes hashed, passwords scrypt
    db = sqlite3.connect(world.p.home / "modelport.db")
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    for secret in [app["app_secret"], code, PASSWORD, user_pw]:
        assert secret not in dump
    assert "scrypt$" in dump and "v1:" in dump
