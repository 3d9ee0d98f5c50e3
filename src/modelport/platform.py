"""The platform in one process: store, control plane, gateway and orchestrator wired together.

`modelport up` serves `Platform.asgi` with uvicorn: paths under `/v1/infers/` go to the gateway,
everything else to the management API. The orchestrator runs on its own thread, and so does
the batch runner, which drives batch services over the instances the orchestrator starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from modelport.auth.passwords import hash_password
from modelport.auth.secrets import SecretBox, derive_hex
from modelport.auth.state import AuthState
from modelport.auth.throttle import LoginThrottle
from modelport.auth.tokens import TokenService, load_or_create_secret
from modelport.backends.local import LocalBackend
from modelport.batch.runner import BatchRunner
from modelport.control.app import create_app
from modelport.control.internal_api import SnapshotFeed
from modelport.gateway.app import gateway_from_settings
from modelport.gateway.ratelimit import make_limiter
from modelport.gateway.remote import routes_to_json
from modelport.orchestrator.reconciler import Gateway as GatewayPort
from modelport.orchestrator.reconciler import Orchestrator
from modelport.settings import Settings
from modelport.store.db import Store
from modelport.store.tables import Membership, Project, User
from modelport.timeutil import now_ms

log = logging.getLogger("modelport")

ADMIN_USER = "admin"
DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Credentials:
    api_url: str
    project_id: str
    username: str
    password: str | None


def bootstrap(store: Store, settings: Settings, api_url: str) -> Credentials:
    """First start: create the admin user and a project, and write credentials.json (mode 0600)."""
    path = settings.credentials_file
    with store.session() as s:
        user = s.scalar(select(User).where(User.name == ADMIN_USER))
        project = s.scalar(select(Project).where(Project.name == DEFAULT_PROJECT))
        if user is not None and project is not None and path.exists():
            data = json.loads(path.read_text())
            if data.get("api_url") != api_url:
                data["api_url"] = api_url
                _write_private(path, data)
            return Credentials(api_url, project.id, user.name, data.get("password"))
        password = secrets.token_urlsafe(18)
        if project is None:
            project = Project(id=uuid.uuid4().hex, name=DEFAULT_PROJECT, created_at=now_ms())
            s.add(project)
        if user is None:
            user = User(
                id=uuid.uuid4().hex,
                name=ADMIN_USER,
                password_hash=hash_password(password),
                is_admin=True,
                created_at=now_ms(),
            )
            s.add(user)
            s.flush()
            s.add(Membership(user_id=user.id, project_id=project.id, role="admin"))
        else:  # credentials file lost: set a new password so the file is right again
            user.password_hash = hash_password(password)
        creds = Credentials(api_url, project.id, user.name, password)
    _write_private(
        path,
        {
            "api_url": api_url,
            "project_id": creds.project_id,
            "username": creds.username,
            "password": password,
        },
    )
    return creds


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


class Platform:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_url)
        self.store.migrate()
        key = load_or_create_secret(settings.secret_key_file)
        self.tokens = TokenService(key, settings.token_ttl_s)
        # -- security (issue 6): sealed secrets, the auth snapshot, the feed for gateway-only processes --
        self.box = SecretBox(key)
        self.internal_key = derive_hex(key, "internal api")
        self.login_throttle = LoginThrottle(settings.login_max_failures, settings.login_lockout_max_s)
        self.feed = SnapshotFeed()
        self.limiter = make_limiter(settings.redis_url, settings.redis_prefix)
        self.gateway = gateway_from_settings(self.tokens, settings, self.limiter)
        self.auth = AuthState(self.tokens, self.box, self.store)
        self.auth.subscribe(self.gateway.set_auth)
        self.auth.subscribe(lambda _snap, records: self.feed.publish(auth=records.to_json()))
        self.auth.refresh()  # also sets the tokens' per-user revocation times
        self._auth_task: asyncio.Task[None] | None = None
        # -- end security --
        self.backend = LocalBackend(settings.log_max_bytes, settings.log_backups)
        self.control = create_app(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch = BatchRunner(settings, self.store)
        self.orchestrator = Orchestrator(
            settings,
            self.store,
            self.backend,
            GatewayPort(
                set_routes=self._set_routes,
                endpoint_down=self.gateway.endpoint_down,
                # An instance drains once neither the gateway nor a batch job has requests on it.
                inflight=lambda iid: self.gateway.inflight(iid) + self.batch.inflight(iid),
                take_stats=self._take_stats,
                post=self._post,
            ),
        )

    def _set_routes(self, table: Any) -> None:
        """On the gateway's loop: the in-process gateway, then the feed of gateway-only processes."""
        self.gateway.set_routes(table)
        self.feed.publish(routes=routes_to_json(table))

    async def _refresh_auth_forever(self, every_s: float = 2.0) -> None:
        """Changes come with their API call; this also catches those made through another control plane."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.auth.refresh)
            except Exception:
                log.exception("auth snapshot refresh failed")

    def _post(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        """Run `fn(*args)` on the gateway's loop; the future completes once it has run there."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                fut.set_exception(exc)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(run)
        else:
            run()
        return fut

    def _take_stats(self) -> dict[str, tuple[int, int]]:
        if self._loop is None or self._loop.is_closed():
            return self.gateway.take_stats()

        async def take() -> dict[str, tuple[int, int]]:
            return self.gateway.take_stats()

        try:
            return asyncio.run_coroutine_threadsafe(take(), self._loop).result(timeout=2)
        except Exception:
            return {}

    def wake(self) -> None:
        self.orchestrator.wake()
        self.batch.wake()

    async def startup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.feed.bind(self._loop)
        await asyncio.to_thread(self.auth.refresh)  # after bootstrap(), which may have made the admin
        self._auth_task = self._loop.create_task(self._refresh_auth_forever())
        await asyncio.to_thread(self.orchestrator.start_thread)
        await asyncio.to_thread(self.batch.start_thread)

    async def shutdown(self, stop_instances: bool = True) -> None:
        # Batch first: its jobs commit what is done while the instances still run.
        await asyncio.to_thread(self.batch.stop_thread)
        await asyncio.to_thread(self.orchestrator.stop_thread, stop_instances)
        if self._auth_task is not None:
            self._auth_task.cancel()
        await self.gateway.aclose()
        aclose = getattr(self.limiter, "aclose", None)
        if aclose is not None:
            await aclose()
        self.store.dispose()

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"].startswith("/v1/infers"):
            await self.gateway(scope, receive, send)
        else:
            await self.control(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("platform start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
