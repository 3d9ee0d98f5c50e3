"""Helpers for runtime tests: model packages on disk and instances as real subprocesses on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_package(root: Path, config: dict[str, Any] | None, files: dict[str, str] | None = None) -> Path:
    """A package dir `root` with `model/config.json` (unless config is None) and `model/<name>` files."""
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (model_dir / name).write_text(text)
    return root


@dataclass
class Instance:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=2)
        except httpx.TransportError:
            return None

    def wait_healthy(self, timeout: float = 20) -> list[httpx.Response]:
        """Poll /health until 200; returns the answers seen on the way (fails if the process dies)."""
        seen: list[httpx.Response] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"instance exited with {self.proc.returncode}:\n{self.log()}")
            response = self.health()
            if response is not None:
                seen.append(response)
                if response.status_code == 200:
                    return seen
            time.sleep(0.02)
        pytest.fail(f"instance not healthy after {timeout} s (saw {[r.status_code for r in seen]}):\n{self.log()}")

    def wait_exit(self, timeout: float = 10) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"instance still running after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def launch_instance(package: Path, log_dir: Path, env: dict[str, str] | None) -> Instance:
    port = free_port()
    log_path = log_dir / f"instance-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelport.runtime", str(package)],
            env={**os.environ, "PORT": str(port), "HOST": "127.0.0.1", **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches anything it started
        )
    return Instance(proc, port, log_path)


Launcher = Callable[..., Instance]  # the `launch` fixtures: launcher(package, env=None) -> Instance
