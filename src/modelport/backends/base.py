"""The backend contract: how the orchestrator starts, stops, watches and reads one instance.

A backend knows processes (or actors), never what model runs inside. Handles are plain data so
the orchestrator can persist them in the store and re-adopt instances after its own restart.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InstanceSpec:
    """What to run. The backend adds `PORT` and `HOST` to `env` (instance contract)."""

    instance_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_dir: Path
    host: str = "127.0.0.1"
    port: int | None = None  # None: the backend picks a free one


@dataclass(frozen=True)
class InstanceHandle:
    """Where an instance runs and how to recognise it again (pid + kernel start time)."""

    instance_id: str
    backend: str
    host: str
    port: int
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a recycled pid from ours
    log_path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceHandle:
        return cls(**data)


class StartError(Exception):
    """The backend could not start an instance (missing program, bad cwd, ...); the message says why."""


@dataclass(frozen=True)
class ProcessState:
    running: bool
    exit_code: int | None = None  # set when it exited and we could learn the code
    detail: str = ""


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        """Start the instance; returns once the process exists (not once it is healthy)."""

    @abc.abstractmethod
    async def stop(self, handle: InstanceHandle, grace_s: float) -> int | None:
        """SIGTERM, wait up to `grace_s`, then kill the process group. Returns the exit code if known."""

    @abc.abstractmethod
    def poll(self, handle: InstanceHandle) -> ProcessState:
        """Is it still running (and still ours)? Cheap; called every reconcile tick."""

    @abc.abstractmethod
    def adopt(self, handle: InstanceHandle) -> bool:
        """After a control-plane restart: True if the handle still names our live process."""

    @abc.abstractmethod
    def read_logs(self, handle: InstanceHandle, tail: int | None = None) -> Iterator[str]:
        """Lines of the instance's stdout/stderr, oldest first, across rotated files."""

    def maintain(self, handle: InstanceHandle) -> None:  # noqa: B027 - optional hook
        """Periodic housekeeping (log rotation); called from the reconcile loop."""
