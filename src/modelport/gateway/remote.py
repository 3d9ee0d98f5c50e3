"""Gateway-only processes (`modelport gateway`): serve `/v1/infers/*` from snapshots long-polled off the control plane.

The platform's own gateway gets its route table and auth snapshot pushed in-process. A
gateway-only process gets the same two things from the control plane's internal feed
(`control/internal_api.py`, Ray Serve long-poll style: it asks with the revision it has, the
control plane answers when there is a newer one or after a timeout, and the process asks again)
and applies them through the same calls (`Gateway.set_routes`, `AuthState.apply`). It needs the
platform key (`$MODELPORT_HOME/secret.key`) to verify tokens, open sealed secrets and call the feed.
Until its first snapshot it answers `/healthz` with 503 and predictions with "not found".
QPS limits hold across processes when they share `MODELPORT_REDIS_URL`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from types import MappingProxyType
from typing import Any

import httpx

from modelport.auth.secrets import SecretBox, derive_hex
from modelport.auth.snapshot import AuthRecords
from modelport.auth.state import AuthState
from modelport.auth.tokens import TokenService
from modelport.control.internal_api import HEADER
from modelport.gateway.app import gateway_from_settings
from modelport.gateway.ratelimit import make_limiter
from modelport.gateway.routes import Endpoint, RouteTable, ServiceRoute, VersionRoute
from modelport.settings import Settings

log = logging.getLogger("modelport.gateway")


def routes_to_json(table: RouteTable) -> dict[str, Any]:
    return {"revision": table.revision, "services": {k: asdict(v) for k, v in table.services.items()}}


def routes_from_json(data: dict[str, Any]) -> RouteTable:
    services = {}
    for sid, raw in data["services"].items():
        versions = tuple(
            VersionRoute(**{**v, "endpoints": tuple(Endpoint(**e) for e in v["endpoints"])}) for v in raw["versions"]
        )
        services[sid] = ServiceRoute(**{**raw, "versions": versions})
    return RouteTable(int(data["revision"]), MappingProxyType(services))


class RemoteGateway:
    """ASGI app of a gateway-only process: `/v1/infers/*`, `/healthz`, and the poller in its lifespan."""

    def __init__(self, settings: Settings, control_url: str) -> None:
        path = settings.secret_key_file
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the gateway with the platform's MODELPORT_HOME")
        key = bytes.fromhex(path.read_text().strip())
        self.control_url = control_url.rstrip("/")
        self.poll_s = settings.snapshot_poll_s
        self._internal_key = derive_hex(key, "internal api")
        self.tokens = TokenService(key, settings.token_ttl_s)
        self.auth = AuthState(self.tokens, SecretBox(key))
        self.limiter = make_limiter(settings.redis_url, settings.redis_prefix)
        self.gateway = gateway_from_settings(self.tokens, settings, self.limiter)
        self.auth.subscribe(self.gateway.set_auth)
        self.revision = ""
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and scope["path"] == "/healthz":
            ready = bool(self.revision)
            body = json.dumps({"status": "ok" if ready else "waiting for the first snapshot"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if ready else 503,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await self.gateway(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._task = asyncio.get_running_loop().create_task(self._poll())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._task is not None:
                    self._task.cancel()
                await self.gateway.aclose()
                aclose = getattr(self.limiter, "aclose", None)
                if aclose is not None:
                    await aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _poll(self) -> None:
        headers = {HEADER: self._internal_key}
        timeout = httpx.Timeout(self.poll_s + 10, connect=5)
        async with httpx.AsyncClient(base_url=self.control_url, timeout=timeout, trust_env=False) as client:
            while True:
                try:
                    params = {"after": self.revision, "timeout": self.poll_s}
                    resp = await client.get("/internal/v1/snapshot", params=params, headers=headers)
                    resp.raise_for_status()
                    self._apply(resp.json())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("snapshot poll failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(1.0)

    def _apply(self, data: dict[str, Any]) -> None:
        if data["revision"] == self.revision:
            return
        if data.get("auth") is not None:
            self.auth.apply(AuthRecords.from_json(data["auth"]))
        if data.get("routes") is not None:
            self.gateway.set_routes(routes_from_json(data["routes"]))
        self.revision = data["revision"]
