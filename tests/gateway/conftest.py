"""Gateway test fixtures: a uvloop loop and `env` (upstreams, a served gateway, clients), closed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import uvloop
from gwtools import Env


@pytest.fixture(scope="session")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    # The gateway runs on uvloop in production; test it there.
    return uvloop.EventLoopPolicy()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        await e.close()
