"""Health probes: one check of one instance, by HTTP GET or by running a command, as a `ProbeResult`.

A probe never raises for anything the instance does (refuses, hangs, answers garbage, exits
non-zero): every outcome is a result with a detail a user can act on. Deciding what a run of
results means (initial delay, period, failure threshold) is the orchestrator's job, not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

# The health body is tiny by contract; don't let a broken instance make us read megabytes.
_MAX_BODY_BYTES = 4096
_EXCERPT_CHARS = 200
_CONNECT_TIMEOUT_S = 2.0
_STARTING_WORDS = frozenset({"loading", "starting"})
# A wildcard bind address is reachable through loopback; connecting to it directly is not portable.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class HealthCheck(Protocol):
    """The part of a model's health config a probe needs (`modelport.packages.HealthConfig`)."""

    @property
    def check_method(self) -> str: ...  # "HTTP" | "EXEC"
    @property
    def url(self) -> str: ...
    @property
    def command(self) -> Sequence[str] | str | None: ...
    @property
    def timeout_seconds(self) -> float: ...


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None  # HTTP status if any
    detail: str  # e.g. "connection refused", "timeout after 5.0s", "HTTP 503: {...body excerpt...}"
    starting: bool = False  # HTTP 503 whose JSON says "loading"/"starting": alive, still loading


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _json_field(body: bytes, *names: str) -> str | None:
    """The first of `names` present in a JSON object body, lower-cased as a string."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    for name in names:
        if name in data:
            return str(data[name]).lower()
    return None


def _http_result(status: int, body: bytes) -> ProbeResult:
    text = body.decode("utf-8", errors="replace")
    if status == 200:
        # The contract says {"health": "true"}; any 200 counts unless the body says otherwise.
        if _json_field(body, "health") == "false":
            return ProbeResult(False, status, f"HTTP 200 but unhealthy: {_excerpt(text)}")
        return ProbeResult(True, status, "HTTP 200")
    starting = status == 503 and _json_field(body, "status", "health") in _STARTING_WORDS
    detail = f"HTTP {status}: {_excerpt(text)}" if text.strip() else f"HTTP {status}"
    return ProbeResult(False, status, detail, starting=starting)


def _connect_detail(exc: httpx.ConnectError) -> str:
    # anyio wraps the OSError that says why ("All connection attempts failed"): find the cause.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return f"cannot connect: {exc or type(exc).__name__}"


def _base_url(host: str, port: int, scheme: str) -> str:
    host = _WILDCARD_TO_LOOPBACK.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _argv(command: Sequence[str] | str | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return list(command)


class Prober:
    """Probes instances. One per orchestrator; `aclose` it on shutdown."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            trust_env=False,  # a probe of a local instance must never go through an env proxy
            verify=False,  # instances that speak HTTPS use self-signed certificates
            follow_redirects=False,
            # A fresh connection each time: a draining instance keeps old connections but refuses
            # new ones, and a pooled connection to a restarted instance would fail spuriously.
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_json(self, host: str, port: int, path: str, timeout_s: float = 2.0) -> object | None:
        """A small JSON document from an instance (e.g. engine stats), or None on any failure."""
        try:
            resp = await self._client.get(_base_url(host, port, "http") + path, timeout=timeout_s)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def probe(self, host: str, port: int, health: HealthCheck) -> ProbeResult:
        method = (health.check_method or "HTTP").upper()
        timeout_s = float(health.timeout_seconds)
        if method == "HTTP":
            scheme = str(getattr(health, "protocol", None) or "http").lower()
            return await self._probe_http(_base_url(host, port, scheme), health.url or "/health", timeout_s)
        if method == "EXEC":
            return await _probe_exec(_argv(health.command), host, port, timeout_s)
        return ProbeResult(False, None, f"unknown check_method {health.check_method!r}; use HTTP or EXEC")

    async def _probe_http(self, base: str, path: str, timeout_s: float) -> ProbeResult:
        url = base + (path if path.startswith("/") else "/" + path)
        timeout = httpx.Timeout(timeout_s, connect=min(_CONNECT_TIMEOUT_S, timeout_s))
        try:
            # httpx times each read separately; this bounds the whole probe.
            async with asyncio.timeout(timeout_s):
                async with self._client.stream("GET", url, timeout=timeout) as response:
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= _MAX_BODY_BYTES:
                            break
                    return _http_result(response.status_code, body[:_MAX_BODY_BYTES])
        except (TimeoutError, httpx.TimeoutException):
            return ProbeResult(False, None, f"timeout after {timeout_s}s")
        except httpx.ConnectError as exc:
            return ProbeResult(False, None, _connect_detail(exc))
        except httpx.HTTPError as exc:
            return ProbeResult(False, None, f"{type(exc).__name__}: {exc or 'no detail'}")


async def _probe_exec(argv: list[str], host: str, port: int, timeout_s: float) -> ProbeResult:
    if not argv:
        return ProbeResult(False, None, "EXEC health check has no command")
    # The command comes from the user's model package: keep the platform's own settings from it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update(PORT=str(port), HOST=host)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # so a timeout kills whatever the command spawned, too
        )
    except OSError as exc:
        return ProbeResult(False, None, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return ProbeResult(False, None, f"timeout after {timeout_s}s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode == 0:
        return ProbeResult(True, None, "exit 0")
    text = output.decode("utf-8", errors="replace").strip()
    detail = f"exit {proc.returncode}" + (f": {_excerpt(text)}" if text else "")
    return ProbeResult(False, None, detail)
