"""Benchmark helpers: run a throwaway `modelport up` in its own process and home directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Platform:
    def __init__(self, **env: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="mp-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MODELPORT_HOME": str(self.home), **env}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Platform:
        log = (self.home / "platform.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelport.cli.main", "up", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"platform did not start; see {self.home / 'platform.log'}")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def client(self):  # type: ignore[no-untyped-def]
        from modelport.client import Client

        return Client.from_credentials(self.home / "credentials.json", self.url)
