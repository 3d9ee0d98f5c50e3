"""Security test fixtures: one real platform with two projects, users of each role, and a probe service in each.

`world` (session-scoped): project A (`default`, the bootstrap admin's) and project B; users
`alice` (developer in A), `victor` (viewer in A), `bea` (admin in B only); a `probe` service in
each project (tests/security/models/probe prints every request that reaches it). The platform
runs with the real default QPS limit (100 requests/s).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.conftest import PlatformProc, _reap, make_platform, wait_until

from modelport.client import Client

PROBE = Path(__file__).parent / "models" / "probe"
PASSWORD = "correct horse battery"


@dataclass
class World:
    p: PlatformProc
    project_a: str
    project_b: str
    service_a: str
    service_b: str
    users: dict[str, str] = field(default_factory=dict)  # name -> id
    clients: list[Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.p.url

    def admin(self, project: str | None = None) -> Client:
        creds = self.p.creds()
        return self._keep(Client(self.url, project or self.project_a, creds["username"], creds["password"]))

    def client(self, user: str, project: str, password: str = PASSWORD) -> Client:
        return self._keep(Client(self.url, project, user, password))

    def signed(self, access_key: str, secret_key: str, project: str | None = None) -> Client:
        return self._keep(Client(self.url, project or self.project_a, access_key=access_key, secret_key=secret_key))

    def token(self, user: str, project: str, password: str = PASSWORD) -> str:
        return self.client(user, project, password).token()

    def _keep(self, c: Client) -> Client:
        self.clients.append(c)
        return c


def token_for(url: str, user: str, password: str, project_id: str) -> httpx.Response:
    body = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": user, "password": password}}},
            "scope": {"project": {"id": project_id}},
        }
    }
    return httpx.post(f"{url}/v3/auth/tokens", json=body)


def deploy_probe(c: Client, name: str, **properties: object) -> str:
    """Import the probe model (once per project) and deploy it; wait until it runs."""
    found = c.list_models(model_name="probe", exact_match=True)["models"]
    model_id = found[0]["model_id"] if found else c.import_model("probe", "1.0.0", "Image", PROBE)
    assert c.wait_model(model_id)["model_status"] == "published"
    body = {
        "service_name": name,
        "infer_type": "real-time",
        "config": [{"model_id": model_id, "weight": 100, "specification": "modelarts.vm.cpu.1u", "instance_count": 1}],
    }
    if properties:
        body["additional_properties"] = properties
    sid = c.create_service(body)
    svc = c.wait_service(sid, timeout=120)
    assert svc["status"] == "running", svc
    return sid


def probe_lines(c: Client, service_id: str) -> list[str]:
    """What reached the probe instance(s), from the instance logs."""
    logs = c.logs(service_id, tail=10000)["instance_logs"]
    return [e["message"] for e in logs if e["message"].startswith("probe: POST")]


def wait_seen(c: Client, service_id: str, needle: str) -> None:
    wait_until(lambda: any(needle in line for line in probe_lines(c, service_id)), 10, what=f"probe log {needle}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    p = make_platform(tmp_path_factory.mktemp("security"))
    p.env.pop("MODELPORT_QPS_LIMIT", None)  # the real default
    p.start()
    admin_a = None
    w = None
    try:
        creds = p.creds()
        admin_a = Client(p.url, creds["project_id"], creds["username"], creds["password"])
        project_b = admin_a.create_project("project-b")["id"]
        w = World(p, creds["project_id"], project_b, "", "")
        for name, project, role in (
            ("alice", w.project_a, "developer"),
            ("victor", w.project_a, "viewer"),
            ("bea", project_b, "admin"),
        ):
            user = admin_a.create_user(name, PASSWORD)
            w.users[name] = user["id"]
            admin_a.add_member(project, user["id"], role)
        w.users["admin"] = admin_a.find_user("admin")["id"]
        w.service_a = deploy_probe(admin_a, "probe-a")
        w.service_b = deploy_probe(w.client("bea", project_b), "probe-b")
        yield w
    finally:
        if w is not None:
            for c in w.clients:
                c.close()
        if admin_a is not None:
            admin_a.close()
        _reap(p)


def error_of(resp: httpx.Response) -> tuple[int, str]:
    try:
        return resp.status_code, resp.json().get("error_code", "")
    except (ValueError, json.JSONDecodeError):
        return resp.status_code, ""
