"""Python SDK: the management API and the gateway, over HTTP, with token handling or AK/SK signing.

client = Client.from_credentials()          # reads $MODELPORT_HOME/credentials.json
model_id = client.import_model("digits", "1.0.0", "Scikit_Learn", "examples/digits/build/digits-1.0.0")
signed = Client(url, project_id, access_key=AK, secret_key=SK)   # SDK-HMAC-SHA256 instead of a token
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from modelport.auth import signing
from modelport.settings import get_settings


class ApiError(Exception):
    """A platform error (`error_code` set) or a model's own non-2xx answer (`error_code` None)."""

    def __init__(self, status: int, error_code: str | None, message: str, body: Any = None) -> None:
        self.status = status
        self.error_code = error_code
        self.message = message
        self.body = body
        super().__init__(f"{error_code or status}: {message}")


class Client:
    def __init__(
        self,
        api_url: str,
        project_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.project_id = project_id
        self.username = username
        self._password = password
        # With an AK/SK pair every request is signed (spec §5.3) and no token is fetched.
        self.access_key = access_key
        self._secret_key = secret_key
        self._token: str | None = None
        self._token_at = 0.0
        # trust_env=False: a proxy from the environment must never see a token for a local platform.
        self.http = httpx.Client(base_url=self.api_url, timeout=timeout, trust_env=False)

    @classmethod
    def from_credentials(cls, path: Path | None = None, api_url: str | None = None) -> Client:
        """From `credentials.json`; `MODELPORT_API_URL`, `MODELPORT_PROJECT_ID`, `MODELPORT_USERNAME` /
        `MODELPORT_PASSWORD` and `MODELPORT_ACCESS_KEY` / `MODELPORT_SECRET_KEY` (or the file's
        `access_key` / `secret_key`) override it; with an AK/SK pair the client signs instead of using tokens."""
        path = path or get_settings().credentials_file
        env = os.environ
        if not path.exists() and not (env.get("MODELPORT_API_URL") and env.get("MODELPORT_PROJECT_ID")):
            raise ApiError(
                0,
                "MP.0001",
                f"No credentials at {path}. Start the platform with `modelport up` or set MODELPORT_HOME.",
            )
        data = json.loads(path.read_text()) if path.exists() else {}
        access_key = env.get("MODELPORT_ACCESS_KEY") or data.get("access_key")
        secret_key = env.get("MODELPORT_SECRET_KEY") or data.get("secret_key")
        username = env.get("MODELPORT_USERNAME") or data.get("username")
        password = env.get("MODELPORT_PASSWORD") or data.get("password")
        if env.get("MODELPORT_USERNAME") and not env.get("MODELPORT_PASSWORD"):
            password = None
        return cls(
            api_url or env.get("MODELPORT_API_URL") or data["api_url"],
            env.get("MODELPORT_PROJECT_ID") or data["project_id"],
            username,
            password,
            access_key=access_key if access_key and secret_key else None,
            secret_key=secret_key if access_key and secret_key else None,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- auth ------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None or time.time() - self._token_at > 3600:
            if self.username is None or self._password is None:
                raise ApiError(0, "MP.0001", "No user name and password to get a token with (AK/SK signs instead).")
            body = {
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {"user": {"name": self.username, "password": self._password}},
                    },
                    "scope": {"project": {"id": self.project_id}},
                }
            }
            resp = self.http.post("/v3/auth/tokens", json=body)
            _raise_for(resp)
            self._token, self._token_at = resp.headers["X-Subject-Token"], time.time()
        return self._token

    def request(self, method: str, url: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        """An authenticated request: signed with the AK/SK pair if there is one, else with a token."""
        headers = dict(kw.pop("headers", None) or {})
        if not self.access_key:
            headers.setdefault("X-Auth-Token", self.token())
            return self.http.send(self.http.build_request(method, url, headers=headers, **kw), stream=stream)
        req = self.http.build_request(method, url, headers=headers, **kw)
        body = req.read()
        to_sign = {"Host": req.headers["host"], "X-Project-Id": self.project_id}
        if "content-type" in req.headers:
            to_sign["Content-Type"] = req.headers["content-type"]
        path, _, query = req.url.raw_path.decode("ascii").partition("?")
        extra = signing.sign(self.access_key, self._secret_key or "", method, path, query, to_sign, body)
        req.headers.update({**to_sign, **extra})
        return self.http.send(req, stream=stream)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return self._call_url(method, f"/v1/{self.project_id}{path}", **kw)

    def _call_url(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.request(method, url, **kw)
        _raise_for(resp)
        return resp.json() if resp.content else {}

    # ---- models ----------------------------------------------------------------------
    def import_model(self, name: str, version: str, model_type: str, source: str | Path, **fields: Any) -> str:
        body = {
            "model_name": name,
            "model_version": version,
            "model_type": model_type,
            "source_location": str(source),
            **fields,
        }
        return self._call("POST", "/models", json=body)["model_id"]

    def list_models(self, **query: Any) -> dict[str, Any]:
        return self._call("GET", "/models", params=_clean(query))

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._call("GET", f"/models/{model_id}")

    def delete_model(self, model_id: str, cascade: bool = False) -> dict[str, Any]:
        return self._call("DELETE", f"/models/{model_id}", params={"cascade": "true"} if cascade else None)

    def wait_model(self, model_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            model = self.get_model(model_id)
            if model["model_status"] != "publishing" or time.monotonic() > deadline:
                return model
            time.sleep(0.2)

    # ---- services --------------------------------------------------------------------
    def create_service(self, body: dict[str, Any]) -> str:
        return self._call("POST", "/services", json=body)["service_id"]

    def list_services(self, **query: Any) -> dict[str, Any]:
        return self._call("GET", "/services", params=_clean(query))

    def get_service(self, service_id: str) -> dict[str, Any]:
        return self._call("GET", f"/services/{service_id}")

    def update_service(self, service_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", f"/services/{service_id}", json=body)

    def delete_service(self, service_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/services/{service_id}")

    def events(self, service_id: str, **query: Any) -> dict[str, Any]:
        return self._call("GET", f"/services/{service_id}/events", params=_clean(query))

    def logs(self, service_id: str, **query: Any) -> dict[str, Any]:
        """Update history (`logs`) and instance output (`instance_logs`): tail, since, instance_id."""
        return self._call("GET", f"/services/{service_id}/logs", params=_clean(query))

    def follow_logs(self, service_id: str, **query: Any) -> Iterator[dict[str, Any]]:
        """Instance log lines as they are written (server-sent events), until the caller stops."""
        params = {**_clean(query), "follow": "true"}
        url = f"/v1/{self.project_id}/services/{service_id}/logs"
        resp = self.request("GET", url, params=params, timeout=httpx.Timeout(10, read=None), stream=True)
        with resp:
            if not resp.is_success:
                resp.read()
                _raise_for(resp)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "instance_id" in data:
                        yield data
                elif line.startswith("event: end"):
                    return

    def specifications(self) -> dict[str, Any]:
        return self._call("GET", "/services/specifications")

    def find_service(self, name_or_id: str) -> dict[str, Any]:
        """A service by id, or by exact name."""
        for svc in self.list_services()["services"]:
            if name_or_id in (svc["service_id"], svc["service_name"]):
                return svc
        raise ApiError(404, "ModelArts.3502", f"Service {name_or_id} not found. See `modelport service list`.")

    def wait_service(
        self,
        service_id: str,
        until: tuple[str, ...] = ("running", "failed", "concerning", "stopped"),
        timeout: float = 300.0,
        on_poll: Any = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            svc = self.get_service(service_id)
            if on_poll:
                on_poll(svc)
            if svc["status"] in until or time.monotonic() > deadline:
                return svc
            time.sleep(0.25)

    # ---- predictions -----------------------------------------------------------------
    def predict_raw(self, service_id: str, path: str = "", **kw: Any) -> httpx.Response:
        return self.request("POST", f"/v1/infers/{service_id}{path}", **kw)

    def predict(self, service_id: str, json_body: Any = None, files: Any = None, path: str = "") -> Any:
        resp = self.predict_raw(service_id, path, json=json_body, files=files)
        _raise_for(resp)
        return resp.json()

    def set_qps(self, service_id: str, qps: int | None) -> dict[str, Any]:
        """The service's gateway QPS limit (None: back to the platform default)."""
        return self.update_service(service_id, {"additional_properties": {"qps_limit": qps}})

    # ---- credentials (AK/SK), users, projects ------------------------------------------
    def create_credential(self, description: str = "", user_id: str | None = None) -> dict[str, Any]:
        """A new AK/SK pair: `{"access", "secret", ...}`; the secret is shown only here."""
        body = {"credential": {"description": description, **({"user_id": user_id} if user_id else {})}}
        return self._call_url("POST", "/v3.0/OS-CREDENTIAL/credentials", json=body)["credential"]

    def list_credentials(self, user_id: str | None = None) -> list[dict[str, Any]]:
        params = {"user_id": user_id} if user_id else None
        return self._call_url("GET", "/v3.0/OS-CREDENTIAL/credentials", params=params)["credentials"]

    def delete_credential(self, access_key: str) -> None:
        self._call_url("DELETE", f"/v3.0/OS-CREDENTIAL/credentials/{access_key}")

    def create_user(self, name: str, password: str, is_admin: bool = False) -> dict[str, Any]:
        body = {"user": {"name": name, "password": password, "is_admin": is_admin}}
        return self._call_url("POST", "/v3/users", json=body)["user"]

    def list_users(self) -> list[dict[str, Any]]:
        return self._call_url("GET", "/v3/users")["users"]

    def find_user(self, name_or_id: str) -> dict[str, Any]:
        for user in self.list_users():
            if name_or_id in (user["id"], user["name"]):
                return user
        raise ApiError(404, "MP.1404", f"User {name_or_id} not found. See `modelport user list`.")

    def delete_user(self, user_id: str) -> None:
        self._call_url("DELETE", f"/v3/users/{user_id}")

    def change_password(self, user_id: str, password: str, original_password: str | None = None) -> None:
        user = {"password": password, **({"original_password": original_password} if original_password else {})}
        body = {"user": user}
        self._call_url("POST", f"/v3/users/{user_id}/password", json=body)

    def create_project(self, name: str) -> dict[str, Any]:
        return self._call_url("POST", "/v3/projects", json={"project": {"name": name}})["project"]

    def list_projects(self) -> list[dict[str, Any]]:
        return self._call_url("GET", "/v3/projects")["projects"]

    def find_project(self, name_or_id: str) -> dict[str, Any]:
        for project in self.list_projects():
            if name_or_id in (project["id"], project["name"]):
                return project
        raise ApiError(404, "MP.1414", f"Project {name_or_id} not found. See `modelport project list`.")

    def list_members(self, project_id: str) -> list[dict[str, Any]]:
        return self._call_url("GET", f"/v3/projects/{project_id}/users")["users"]

    def add_member(self, project_id: str, user_id: str, role: str) -> None:
        self._call_url("PUT", f"/v3/projects/{project_id}/users/{user_id}/roles/{role}")

    def remove_member(self, project_id: str, user_id: str) -> None:
        self._call_url("DELETE", f"/v3/projects/{project_id}/users/{user_id}")

    # ---- apps (app authentication of predictions) --------------------------------------
    def create_app(self, name: str, description: str = "") -> dict[str, Any]:
        """A new app: `{"app_id", "app_key", "app_secret", ...}`; the secret is shown only here."""
        return self._call("POST", "/apps", json={"name": name, "description": description})

    def list_apps(self) -> list[dict[str, Any]]:
        return self._call("GET", "/apps")["apps"]

    def get_app(self, app_id: str) -> dict[str, Any]:
        return self._call("GET", f"/apps/{app_id}")

    def find_app(self, name_or_id: str) -> dict[str, Any]:
        for app in self.list_apps():
            if name_or_id in (app["app_id"], app["name"]):
                return app
        raise ApiError(404, "MP.1434", f"App {name_or_id} not found. See `modelport app list`.")

    def delete_app(self, app_id: str) -> None:
        self._call("DELETE", f"/apps/{app_id}")

    def add_app_code(self, app_id: str, code: str | None = None) -> dict[str, Any]:
        """A new AppCode: `{"id", "app_code", ...}`; the code is shown only here."""
        return self._call("POST", f"/apps/{app_id}/app-codes", json={"app_code": code} if code else {})

    def remove_app_code(self, app_id: str, code_id: str) -> None:
        self._call("DELETE", f"/apps/{app_id}/app-codes/{code_id}")

    def bind_app(self, app_id: str, service_id: str) -> dict[str, Any]:
        return self._call("POST", f"/apps/{app_id}/bindings", json={"service_id": service_id})

    def unbind_app(self, app_id: str, service_id: str) -> None:
        self._call("DELETE", f"/apps/{app_id}/bindings/{service_id}")


def _clean(query: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in query.items() if v is not None}


def _raise_for(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if isinstance(body, dict) and "error_code" in body:
        raise ApiError(resp.status_code, body["error_code"], body.get("error_msg", ""), body)
    raise ApiError(resp.status_code, None, f"the model answered {resp.status_code}: {str(body)[:500]}", body)
