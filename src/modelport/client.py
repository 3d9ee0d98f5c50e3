"""Python SDK: the management API and the gateway, over HTTP, with token handling.

client = Client.from_credentials()          # reads $MODELPORT_HOME/credentials.json
model_id = client.import_model("digits", "1.0.0", "Scikit_Learn", "examples/digits/build/digits-1.0.0")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

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
        username: str,
        password: str,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.project_id = project_id
        self.username = username
        self._password = password
        self._token: str | None = None
        self._token_at = 0.0
        # trust_env=False: a proxy from the environment must never see a token for a local platform.
        self.http = httpx.Client(base_url=self.api_url, timeout=timeout, trust_env=False)

    @classmethod
    def from_credentials(cls, path: Path | None = None, api_url: str | None = None) -> Client:
        path = path or get_settings().credentials_file
        if not path.exists():
            raise ApiError(
                0,
                "MP.0001",
                f"No credentials at {path}. Start the platform with `modelport up` or set MODELPORT_HOME.",
            )
        data = json.loads(path.read_text())
        return cls(
            api_url or os.environ.get("MODELPORT_API_URL") or data["api_url"],
            data["project_id"],
            data["username"],
            data["password"],
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

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"X-Auth-Token": self.token(), **kw.pop("headers", {})}
        resp = self.http.request(method, f"/v1/{self.project_id}{path}", headers=headers, **kw)
        _raise_for(resp)
        return resp.json() if resp.content else {}

    # ---- models ----------------------------------------------------------------------
    def import_model(
        self, name: str, version: str, model_type: str, source: str | Path, **fields: Any
    ) -> str:
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
        headers = {"X-Auth-Token": self.token()}
        params = {**_clean(query), "follow": "true"}
        url = f"/v1/{self.project_id}/services/{service_id}/logs"
        with self.http.stream(
            "GET", url, params=params, headers=headers, timeout=httpx.Timeout(10, read=None)
        ) as resp:
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
        raise ApiError(
            404, "ModelArts.3502", f"Service {name_or_id} not found. See `modelport service list`."
        )

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
        headers = {"X-Auth-Token": self.token(), **kw.pop("headers", {})}
        return self.http.post(f"/v1/infers/{service_id}{path}", headers=headers, **kw)

    def predict(self, service_id: str, json_body: Any = None, files: Any = None, path: str = "") -> Any:
        resp = self.predict_raw(service_id, path, json=json_body, files=files)
        _raise_for(resp)
        return resp.json()


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
