"""Health probes against real sockets and real commands."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from modelport.backends.local import free_port
from modelport.orchestrator.probes import Prober, ProbeResult


@dataclass(frozen=True)
class Health:
    """Stands in for `modelport.packages.HealthConfig`."""

    check_method: str = "HTTP"
    url: str = "/health"
    command: Sequence[str] | str | None = None
    initial_delay_seconds: float = 0
    timeout_seconds: float = 2.0
    period_seconds: float = 5
    failure_threshold: int = 3


# path -> (status, body); "/slow" never answers, "/drip" answers a byte at a time.
ROUTES = {
    "/health": (200, b'{"health": "true"}'),
    "/plain": (200, b"OK"),
    "/unhealthy": (200, b'{"health": "false"}'),
    "/loading": (503, b'{"status": "loading", "detail": "reading weights"}'),
    "/broken": (503, b'{"error": "model crashed"}'),
    "/missing": (404, b""),
}


async def _respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    path = request.split(b" ")[1].decode()
    if path == "/slow":
        await asyncio.sleep(30)
    if path == "/drip":  # each read is quick, the whole answer is not
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.05)
        return
    status, body = ROUTES[path]
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    writer.close()


@pytest.fixture
async def server() -> AsyncIterator[int]:
    """A tiny HTTP server on a free port, answering per ROUTES; yields the port."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _respond(reader, writer)
        finally:
            handlers.discard(task)
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    for task in list(handlers):  # those stuck in "/slow"
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await srv.wait_closed()


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober()
    yield p
    await p.aclose()


# -- HTTP ----------------------------------------------------------------------------------------


async def test_http_200_is_healthy(prober: Prober, server: int) -> None:
    assert await prober.probe("127.0.0.1", server, Health()) == ProbeResult(True, 200, "HTTP 200")
    assert (await prober.probe("127.0.0.1", server, Health(url="/plain"))).ok
    assert (await prober.probe("0.0.0.0", server, Health())).ok  # a wildcard bind is probed on loopback


async def test_http_200_saying_false_is_not_healthy(prober: Prober, server: int) -> None:
    result = await prober.probe("127.0.0.1", server, Health(url="unhealthy"))  # leading slash added
    assert not result.ok
    assert result.status == 200
    assert '"false"' in result.detail


async def test_http_503_loading_means_starting(prober: Prober, server: int) -> None:
    result = await prober.probe("127.0.0.1", server, Health(url="/loading"))
    assert (result.ok, result.status, result.starting) == (False, 503, True)
    assert result.detail.startswith("HTTP 503: ")
    assert "reading weights" in result.detail


@pytest.mark.parametrize(("url", "status"), [("/broken", 503), ("/missing", 404)])
async def test_http_error_is_not_starting(prober: Prober, server: int, url: str, status: int) -> None:
    result = await prober.probe("127.0.0.1", server, Health(url=url))
    assert (result.ok, result.status, result.starting) == (False, status, False)
    assert result.detail.startswith(f"HTTP {status}")


async def test_connection_refused(prober: Prober) -> None:
    result = await prober.probe("127.0.0.1", free_port(), Health())
    assert result == ProbeResult(False, None, "connection refused")


async def test_http_timeout(prober: Prober, server: int) -> None:
    started = time.monotonic()
    result = await prober.probe("127.0.0.1", server, Health(url="/slow", timeout_seconds=0.3))
    assert time.monotonic() - started < 1.0
    assert result == ProbeResult(False, None, "timeout after 0.3s")


async def test_http_timeout_bounds_the_whole_probe(prober: Prober, server: int) -> None:
    started = time.monotonic()
    result = await prober.probe("127.0.0.1", server, Health(url="/drip", timeout_seconds=0.3))
    assert time.monotonic() - started < 1.0
    assert result == ProbeResult(False, None, "timeout after 0.3s")


async def test_probe_ignores_proxy_settings(server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{free_port()}")
    unproxied = Prober()  # httpx reads proxy variables when the client is made
    try:
        assert (await unproxied.probe("127.0.0.1", server, Health())).ok
    finally:
        await unproxied.aclose()


# -- EXEC ----------------------------------------------------------------------------------------


def exec_health(code: str, timeout: float = 5.0) -> Health:
    return Health(check_method="EXEC", command=(sys.executable, "-c", code), timeout_seconds=timeout)


async def test_exec_exit_0_is_healthy_and_sees_port_and_host(prober: Prober, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_DATABASE_URL", "postgresql://u:secret@db/x")
    code = (
        "import os, sys; e = os.environ; seen = (e['PORT'], e['HOST'], 'MODELPORT_DATABASE_URL' in e);"
        "sys.exit(0 if seen == ('4321', 'h7', False) else 5)"
    )
    assert await prober.probe("h7", 4321, exec_health(code)) == ProbeResult(True, None, "exit 0")


async def test_exec_nonzero_reports_code_and_output(prober: Prober) -> None:
    result = await prober.probe("127.0.0.1", 1, exec_health("import sys; print('model not loaded'); sys.exit(2)"))
    assert result == ProbeResult(False, None, "exit 2: model not loaded")


def _processes_with_arg(arg: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if arg.encode() in f.read().split(b"\0"):
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


async def test_exec_timeout_kills_the_command_and_what_it_spawned(prober: Prober) -> None:
    marker = f"31.{os.getpid()}"  # a sleep length no other process uses
    health = Health(check_method="EXEC", command=f"sh -c 'sleep {marker} & sleep {marker}'", timeout_seconds=0.3)
    started = time.monotonic()
    result = await prober.probe("127.0.0.1", 1, health)
    assert time.monotonic() - started < 1.5
    assert result == ProbeResult(False, None, "timeout after 0.3s")
    deadline = time.monotonic() + 2
    while (left := _processes_with_arg(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # killed, waiting to be reaped by their new parent
    assert left == [] or all(_is_zombie(pid) for pid in left)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


async def test_exec_problems_are_results_not_exceptions(prober: Prober) -> None:
    missing = await prober.probe("127.0.0.1", 1, Health(check_method="EXEC", command=("/no/such/probe",)))
    assert not missing.ok
    assert missing.detail.startswith("cannot run '/no/such/probe'")
    assert not (await prober.probe("127.0.0.1", 1, Health(check_method="EXEC"))).ok
    unknown = await prober.probe("127.0.0.1", 1, Health(check_method="TCP"))
    assert not unknown.ok
    assert "check_method" in unknown.detail


async def test_probes_run_concurrently(prober: Prober, server: int) -> None:
    """One slow instance must not delay the probes of the others."""
    started = time.monotonic()
    results = await asyncio.gather(
        prober.probe("127.0.0.1", server, Health(url="/slow", timeout_seconds=0.5)),
        *(prober.probe("127.0.0.1", server, Health()) for _ in range(20)),
        prober.probe("127.0.0.1", 1, exec_health("import time; time.sleep(0.2)")),
    )
    assert time.monotonic() - started < 1.2
    assert [r.ok for r in results] == [False] + [True] * 21
    assert results[0].detail == "timeout after 0.5s"
