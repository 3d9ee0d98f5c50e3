"""Fixtures for runtime tests: instances started as real subprocesses, all killed at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from runtime_support import Instance, Launcher, launch_instance


@contextmanager
def _instances(log_dir: Path) -> Iterator[Launcher]:
    started: list[Instance] = []

    def start(package: Path, env: dict[str, str] | None = None) -> Instance:
        instance = launch_instance(package, log_dir, env)
        started.append(instance)
        return instance

    try:
        yield start
    finally:
        for instance in started:
            instance.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """`launch(package, env=None)` runs `python -m modelport.runtime package`; all killed at teardown."""
    with _instances(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def launch_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """Like `launch`, for instances shared by a whole test module."""
    with _instances(tmp_path_factory.mktemp("instances")) as start:
        yield start
