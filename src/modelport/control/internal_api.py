"""The internal snapshot feed: gateway-only processes long-poll the route table and the auth records.

`GET /internal/v1/snapshot?after=REVISION&timeout=S` answers at once when the feed's revision
differs from `after`, else when it changes or after `timeout` seconds (then with the same
revision: nothing new). Revisions are opaque and start from a random epoch on every platform
start, so a gateway never mistakes a restarted feed for the one it knew. Callers authenticate
with `X-Modelport-Internal`, a key derived from the platform key (`$MODELPORT_HOME/secret.key`).
The auth records carry secrets sealed, never in plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import threading
from typing import Any

from fastapi import APIRouter, Query, Request

from modelport.control.deps import platform
from modelport.errors import E, PlatformError

router = APIRouter(include_in_schema=False)

HEADER = "x-modelport-internal"


class SnapshotFeed:
    """The latest route table and auth records as JSON, and a way to wait for the next change."""

    def __init__(self) -> None:
        self._epoch = secrets.token_hex(4)
        self._counter = 0
        self._lock = threading.Lock()
        self.routes: dict[str, Any] | None = None
        self.auth: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    @property
    def revision(self) -> str:
        return f"{self._epoch}-{self._counter}"

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Waiters live on this loop (the server's); call from it."""
        self._loop = loop
        self._changed = asyncio.Event()

    def publish(self, *, routes: dict[str, Any] | None = None, auth: dict[str, Any] | None = None) -> None:
        """Any thread: replace what changed and wake the waiters."""
        with self._lock:
            if routes is not None:
                self.routes = routes
            if auth is not None:
                self.auth = auth
            self._counter += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    def current(self) -> dict[str, Any]:
        with self._lock:
            return {"revision": self.revision, "routes": self.routes, "auth": self.auth}

    async def wait(self, after: str, timeout: float) -> None:
        changed = self._changed
        if after != self.revision or changed is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)


@router.get("/internal/v1/snapshot")
async def snapshot(
    request: Request, after: str = Query(""), timeout: float = Query(25.0, ge=0, le=120)
) -> dict[str, Any]:
    p = platform(request)
    given = request.headers.get(HEADER, "")
    if not hmac.compare_digest(given.encode(), p.internal_key.encode()):
        raise PlatformError(E.TOKEN_INVALID)
    # A gateway that goes away must not hold this request (and a platform shutdown) for the timeout.
    waiting = asyncio.ensure_future(p.feed.wait(after, timeout))
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiting, gone):
        task.cancel()
    return p.feed.current()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
