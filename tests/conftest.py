"""Shared fixtures: a real `modelport up` process on a free port with its own MODELPORT_HOME."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class PlatformProc:
    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log: Path | None = None
    seen_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.log = self.home / f"platform-{int(time.time() * 1000)}.log"
        fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelport.cli.main", "up", "--port", str(self.port)],
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"platform exited early:\n{self.log.read_text()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, what="platform /healthz")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def creds(self) -> dict[str, str]:
        return json.loads((self.home / "credentials.json").read_text())

    def client(self):  # type: ignore[no-untyped-def]
        from modelport.client import Client

        return Client.from_credentials(self.home / "credentials.json", self.url)

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", "modelport.cli.main", *args],
            env={**self.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"modelport {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def instance_pids(self) -> list[int]:
        pids = []
        c = self.client()
        try:
            for svc in c.list_services()["services"]:
                for cfg in c.get_service(svc["service_id"])["config"]:
                    pids += [i["pid"] for i in cfg["instances"] if i.get("pid")]
        finally:
            c.close()
        self.seen_pids.update(pids)
        return pids


# Every platform a test made, so the session can stop any that a failing setup left running.
_MADE: list[PlatformProc] = []


@pytest.fixture(scope="session", autouse=True)
def _no_platform_left_behind() -> Iterator[None]:
    yield
    for p in _MADE:
        if p.proc is not None:
            p.stop()


def make_platform(tmp_path: Path, **env: str) -> PlatformProc:
    home = tmp_path / "mphome"
    home.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "MODELPORT_HOME": str(home),
        "MODELPORT_RESTART_BACKOFF_S": "0.5",
        "PYTHONUNBUFFERED": "1",
        # Load tests outrun the default per-service limit of 100 requests/s; tests/security checks the default.
        "MODELPORT_QPS_LIMIT": "100000",
        **env,
    }
    full_env.pop("MODELPORT_DATABASE_URL", None) if "MODELPORT_DATABASE_URL" not in env else None
    made = PlatformProc(home=home, port=free_port(), env=full_env)
    _MADE.append(made)
    return made


def _reap(p: PlatformProc) -> None:
    p.stop()
    # Nothing we started may outlive the test: instances included.
    for pid in p.seen_pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"instance pid {pid} outlived the platform")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PlatformProc]:
    p = make_platform(tmp_path)
    p.start()
    try:
        yield p
    finally:
        _reap(p)


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    """One platform for a whole test module (deploying is the slow part; tests use distinct services)."""
    p = make_platform(tmp_path_factory.mktemp("shared"))
    p.start()
    try:
        yield p
    finally:
        _reap(p)


@pytest.fixture(scope="session")
def digits_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_build", EXAMPLES / "digits" / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(tmp_path_factory.mktemp("digits"))
