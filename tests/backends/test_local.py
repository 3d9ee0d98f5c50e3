"""Local backend: real processes, real signals, real log files."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.backends import local
from modelport.backends.base import InstanceHandle, InstanceSpec, StartError
from modelport.backends.local import LocalBackend, free_port
from modelport.backends.logshim import parse_line


def stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat fields from field 3 (state) on; None if the pid is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 1 :].split()


def pid_alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def live_group_members(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group `pgid`."""
    pids = (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    return [pid for pid in pids if (f := stat_fields(pid)) and int(f[2]) == pgid and pid_alive(pid)]


class TrackingBackend(LocalBackend):
    """A LocalBackend that records every handle it starts, so teardown can check and clean up."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.started: list[InstanceHandle] = []

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        handle = await super().start(spec)
        self.started.append(handle)
        return handle


@pytest.fixture
def make_backend() -> Iterator[Callable[..., TrackingBackend]]:
    """Creates tracking backends; at teardown fails the test if any instance process is left."""
    backends: list[TrackingBackend] = []

    def factory(**kwargs: int) -> TrackingBackend:
        backend = TrackingBackend(**kwargs)
        backends.append(backend)
        return backend

    yield factory
    leftovers = {}
    for backend in backends:
        for handle in backend.started:
            if members := live_group_members(handle.pid):
                leftovers[handle.instance_id] = members
                for pid in members:
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2
            while backend.poll(handle).running and time.monotonic() < deadline:  # reaps our child
                time.sleep(0.01)
    assert not leftovers, f"instance processes left running after the test: {leftovers}"


@pytest.fixture
def backend(make_backend: Callable[..., TrackingBackend]) -> TrackingBackend:
    return make_backend()


SLEEPER = """
import time
print("ready", flush=True)
time.sleep(60)
"""

EXITS_ON_TERM = """
import signal, sys, time
def bye(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
time.sleep(60)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""

# The leader exits on SIGTERM at once; the worker it spawned ignores SIGTERM.
LEADER_WITH_STUBBORN_WORKER = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('worker ready', flush=True); time.sleep(60)"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"worker pid {worker.pid}", flush=True)
time.sleep(60)
"""

HTTP_SERVER = """
import http.server, json, os, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"health": "true"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
names = ("PORT", "HOST", "MODELPORT_INSTANCE_ID", "EXTRA", "MODELPORT_LEAKED_SETTING")
print("env " + json.dumps({k: os.environ.get(k) for k in names}), flush=True)
print("hello on stderr", file=sys.stderr, flush=True)
http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Health).serve_forever()
"""

# Prints one batch of lines each time the test drops a go<N> file, so rotation happens between batches.
BATCHES = """
import os, time
for r in range(5):
    while not os.path.exists(f"go{r}"):
        time.sleep(0.005)
    for i in range(20):
        print(f"r{r} line {i:02d} " + "x" * 40, flush=True)
    print(f"r{r} done", flush=True)
time.sleep(60)
"""


def make_spec(tmp_path: Path, instance_id: str, code: str, **kwargs: object) -> InstanceSpec:
    script = tmp_path / f"{instance_id}.py"
    script.write_text(textwrap.dedent(code))
    return InstanceSpec(
        instance_id=instance_id,
        argv=[sys.executable, str(script)],
        env=kwargs.pop("env", {}),  # type: ignore[arg-type]
        cwd=str(tmp_path),
        log_dir=tmp_path / "logs",
        **kwargs,  # type: ignore[arg-type]
    )


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def logged(backend: LocalBackend, handle: InstanceHandle, tail: int | None = None) -> list[str]:
    """The instance's output lines, without the shim's timestamp and stream prefix."""
    return [parse_line(line).text for line in backend.read_logs(handle, tail=tail)]


async def start_ready(backend: LocalBackend, spec: InstanceSpec, marker: str = "ready") -> InstanceHandle:
    handle = await backend.start(spec)
    await wait_for(lambda: any(marker in line for line in logged(backend, handle)))
    return handle


# -- start ---------------------------------------------------------------------------------------


async def test_instance_gets_port_host_and_id_and_logs_both_streams(
    backend: TrackingBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPORT_LEAKED_SETTING", "platform secret")
    spec = make_spec(tmp_path, "inst-http", HTTP_SERVER, env={"EXTRA": "from spec"})
    handle = await backend.start(spec)
    assert handle.backend == "local"
    assert handle.host == "127.0.0.1"
    assert handle.log_path == str(tmp_path / "logs" / "inst-http.log")

    async with httpx.AsyncClient(trust_env=False) as client:
        url = f"http://{handle.host}:{handle.port}/health"

        async def healthy() -> bool:
            try:
                return (await client.get(url)).json() == {"health": "true"}
            except httpx.TransportError:
                return False

        deadline = time.monotonic() + 5
        while not await healthy():
            assert time.monotonic() < deadline, f"server never answered; log: {logged(backend, handle)}"
            await asyncio.sleep(0.02)

    lines = logged(backend, handle)
    env_line = next(line for line in lines if line.startswith("env "))
    assert f'"PORT": "{handle.port}"' in env_line
    assert '"HOST": "127.0.0.1"' in env_line
    assert '"MODELPORT_INSTANCE_ID": "inst-http"' in env_line
    assert '"EXTRA": "from spec"' in env_line
    assert '"MODELPORT_LEAKED_SETTING": null' in env_line
    assert "hello on stderr" in lines
    await wait_for(lambda: any("GET /health" in line for line in logged(backend, handle)))  # stderr access log

    # The default SIGTERM action ends the server: the exit code says which signal.
    assert await backend.stop(handle, grace_s=5) == -signal.SIGTERM


async def test_start_uses_the_requested_port(backend: TrackingBackend, tmp_path: Path) -> None:
    port = free_port()
    handle = await start_ready(backend, make_spec(tmp_path, "fixed", HTTP_SERVER, port=port), "env ")
    assert handle.port == port
    assert f'"PORT": "{port}"' in next(line for line in logged(backend, handle) if line.startswith("env "))
    await backend.stop(handle, grace_s=2)


async def test_start_of_a_missing_program_raises_start_error(backend: TrackingBackend, tmp_path: Path) -> None:
    spec = dataclasses.replace(make_spec(tmp_path, "missing", SLEEPER), argv=[str(tmp_path / "no-such-prog")])
    with pytest.raises(StartError, match="cannot start"):
        await backend.start(spec)
    spec = dataclasses.replace(make_spec(tmp_path, "bad-cwd", SLEEPER), cwd=str(tmp_path / "no-such-dir"))
    with pytest.raises(StartError, match="no-such-dir"):
        await backend.start(spec)


def test_free_port_can_be_bound() -> None:
    port = free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


# -- poll ----------------------------------------------------------------------------------------


async def test_poll_reports_kill_by_signal(backend: TrackingBackend, tmp_path: Path) -> None:
    handle = await start_ready(backend, make_spec(tmp_path, "killed", SLEEPER))
    assert backend.poll(handle).running

    os.kill(handle.pid, signal.SIGKILL)
    await wait_for(lambda: not backend.poll(handle).running)
    state = backend.poll(handle)
    assert state.exit_code == -9
    assert state.detail == "killed by signal SIGKILL"

    started = time.monotonic()
    assert await backend.stop(handle, grace_s=5) == -9  # idempotent on a dead instance
    assert time.monotonic() - started < 0.5


async def test_poll_reports_exit_code(backend: TrackingBackend, tmp_path: Path) -> None:
    handle = await backend.start(make_spec(tmp_path, "exits", "import sys; sys.exit(3)"))
    await wait_for(lambda: not backend.poll(handle).running)
    assert backend.poll(handle).exit_code == 3
    assert backend.poll(handle).detail == "exited with code 3"


async def test_comm_with_spaces_and_parentheses_is_parsed(backend: TrackingBackend, tmp_path: Path) -> None:
    odd = tmp_path / "a) (b c)"
    odd.symlink_to(sys.executable)
    spec = dataclasses.replace(make_spec(tmp_path, "odd", SLEEPER), argv=[str(odd), str(tmp_path / "odd.py")])
    handle = await start_ready(backend, spec)
    # The instance command runs under the log shim: its child carries the odd name.
    child = int(Path(f"/proc/{handle.pid}/task/{handle.pid}/children").read_text().split()[0])
    assert Path(f"/proc/{child}/comm").read_text().strip() == "a) (b c)"
    stat = local._read_stat(child)
    assert stat is not None and stat.start_ticks >= handle.start_ticks > 0
    assert LocalBackend().adopt(handle)
    await backend.stop(handle, grace_s=2)


# -- stop ----------------------------------------------------------------------------------------


async def test_stop_lets_a_process_exit_cleanly_on_sigterm(backend: TrackingBackend, tmp_path: Path) -> None:
    handle = await start_ready(backend, make_spec(tmp_path, "polite", EXITS_ON_TERM))
    started = time.monotonic()
    assert await backend.stop(handle, grace_s=10) == 0
    assert time.monotonic() - started < 2
    assert "got SIGTERM" in logged(backend, handle)


async def test_stop_kills_a_process_that_ignores_sigterm_after_the_grace(
    backend: TrackingBackend, tmp_path: Path
) -> None:
    handle = await start_ready(backend, make_spec(tmp_path, "stubborn", IGNORES_TERM))
    started = time.monotonic()
    assert await backend.stop(handle, grace_s=0.5) == -9
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.9
    assert not backend.poll(handle).running


async def test_stop_reaches_the_whole_process_group(backend: TrackingBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "group", LEADER_WITH_STUBBORN_WORKER)
    handle = await start_ready(backend, spec, "worker ready")
    worker = int(next(line for line in logged(backend, handle) if line.startswith("worker pid")).split()[-1])
    # shim (the handle's pid), the leader it runs, and the worker: one group
    assert {handle.pid, worker} < set(live_group_members(handle.pid))

    started = time.monotonic()
    # The leader's own exit code; the worker that outlived it got the rest of the grace, then SIGKILL.
    assert await backend.stop(handle, grace_s=0.5) == 0
    assert 0.5 <= time.monotonic() - started < 0.9
    assert not pid_alive(worker)
    assert live_group_members(handle.pid) == []


# -- adopt ---------------------------------------------------------------------------------------


async def test_fresh_backend_adopts_a_live_instance_and_can_stop_it(backend: TrackingBackend, tmp_path: Path) -> None:
    handle = await start_ready(backend, make_spec(tmp_path, "adoptee", SLEEPER))
    stored = InstanceHandle.from_dict(handle.to_dict())  # as the orchestrator keeps it in the store

    restarted = LocalBackend()  # the control plane after a restart: no Popen, only the handle
    assert restarted.adopt(stored)
    assert restarted.poll(stored).running
    assert not restarted.adopt(dataclasses.replace(stored, instance_id="someone-else"))  # environ guard

    assert await restarted.stop(stored, grace_s=2) is None  # not our child: the code is unknown
    assert not restarted.adopt(stored)
    assert restarted.poll(stored) == local.ProcessState(running=False, detail="exited")
    assert backend.poll(handle).exit_code == -signal.SIGTERM  # the real parent learns the code


async def test_recycled_pid_is_neither_adopted_nor_signalled(backend: TrackingBackend, tmp_path: Path) -> None:
    handle = await start_ready(backend, make_spec(tmp_path, "victim", SLEEPER))
    recycled = dataclasses.replace(handle, start_ticks=handle.start_ticks + 1)

    for other in (LocalBackend(), backend):
        assert not other.adopt(recycled)
        assert not other.poll(recycled).running
        await other.stop(recycled, grace_s=0.1)
    await asyncio.sleep(0.2)  # a signal, had one been sent, would have landed by now
    assert backend.poll(handle).running
    await backend.stop(handle, grace_s=2)


def test_another_process_is_not_adopted() -> None:
    me = os.getpid()
    my_ticks = int(stat_fields(me)[19])  # type: ignore[index]
    fresh = LocalBackend()
    common = {"backend": "local", "host": "127.0.0.1", "port": 1, "pid": me, "log_path": "/dev/null"}
    assert not fresh.adopt(InstanceHandle(instance_id="x", start_ticks=my_ticks + 17, **common))
    # Right pid and ticks, but it was never started as instance "x".
    assert not fresh.adopt(InstanceHandle(instance_id="x", start_ticks=my_ticks, **common))
    assert not fresh.adopt(InstanceHandle(instance_id="x", start_ticks=my_ticks, **{**common, "backend": "ray"}))


async def test_dead_instance_is_not_adopted(backend: TrackingBackend, tmp_path: Path) -> None:
    handle = await start_ready(backend, make_spec(tmp_path, "dead", SLEEPER))
    await backend.stop(handle, grace_s=2)
    assert not LocalBackend().adopt(handle)


# -- logs ----------------------------------------------------------------------------------------


def batch(r: int) -> list[str]:
    return [f"r{r} line {i:02d} " + "x" * 40 for i in range(20)] + [f"r{r} done"]


async def test_rotation_keeps_n_backups_and_tail_crosses_files(
    make_backend: Callable[..., TrackingBackend], tmp_path: Path
) -> None:
    backend = make_backend(log_max_bytes=1500, log_backups=2)
    handle = await backend.start(make_spec(tmp_path, "chatty", BATCHES))
    for r in range(5):
        (tmp_path / f"go{r}").touch()
        await wait_for(lambda r=r: logged(backend, handle, tail=1) == [f"r{r} done"])

    current = Path(handle.log_path)
    paths = backend.log_paths(handle)
    # The shim renamed full files away; never more than log_backups of them are kept.
    assert paths[-1] == current and Path(f"{current}.1") in paths
    assert not Path(f"{current}.3").exists()
    everything = [line for r in range(5) for line in batch(r)]
    kept = logged(backend, handle)
    assert kept == everything[-len(kept) :], "lines lost or reordered across a rotation"
    assert batch(4) == kept[-21:] and len(kept) > 21
    assert logged(backend, handle, tail=30) == everything[-30:]
    for raw in backend.read_logs(handle, tail=3):
        stamp = parse_line(raw)
        assert stamp.stream == "stdout" and stamp.time.startswith("20")
    await backend.stop(handle, grace_s=2)


@st.composite
def cut_stream(draw: st.DrawFn) -> list[bytes]:
    """A UTF-8 byte stream cut into 1-5 files at arbitrary bytes (inside lines and characters)."""
    stream = draw(st.text(alphabet="ab\né", max_size=40)).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(files=cut_stream(), tail=st.integers(min_value=0, max_value=12))
def test_tail_is_the_end_of_the_forward_read(files: list[bytes], tail: int) -> None:
    """Files are one byte stream cut anywhere, even inside a line or a UTF-8 character."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(local, "_TAIL_BLOCK", 3)  # many block boundaries in small inputs
        current = Path(tmp) / "i.log"
        *older, newest = files
        for n, data in enumerate(reversed(older), start=1):  # .log.1 is the newest backup
            Path(f"{current}.{n}").write_bytes(data)
        current.write_bytes(newest)
        handle = InstanceHandle("i", "local", "127.0.0.1", 1, 1, 1, str(current))

        stream = b"".join(files)
        expected = stream.decode().split("\n")
        if stream.endswith(b"\n") or not stream:
            expected.pop()
        backend = LocalBackend()
        assert list(backend.read_logs(handle)) == expected
        assert list(backend.read_logs(handle, tail=tail)) == (expected[-tail:] if tail else [])
