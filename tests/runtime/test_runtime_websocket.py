"""WebSocket sessions in the python runtime: the `websocket` hook, frames both ways, close codes, refusals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from runtime_support import EXAMPLES, Instance, Launcher, write_package
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

ASYNC_HOOK = """
import os

from modelport import BaseService


class ChatService(BaseService):
    async def websocket(self, messages):
        try:
            async for message in messages:
                if message == "bye":
                    return
                if message == "fail":
                    raise ValueError("cannot answer " + "x" * 200)
                if message == "json":
                    yield {"reply": [1, 2]}
                    continue
                yield message
        finally:
            marker = os.environ.get("TEST_WS_MARKER")
            if marker:
                open(marker, "a").write("hook ended\\n")
"""
SYNC_HOOK = """
import threading

from modelport import BaseService


class SyncChat(BaseService):
    def websocket(self, messages):
        for message in messages:
            if message == "bye":
                return
            if message == "fail":
                raise RuntimeError("sync hook broke")
            where = "thread" if threading.current_thread() is not threading.main_thread() else "main"
            yield (message.upper() + " from " + where) if isinstance(message, str) else message[::-1]
"""
NO_HOOK = "from modelport import BaseService\n\n\nclass Plain(BaseService):\n    pass\n"


@pytest.fixture(scope="module")
def example(launch_shared: Launcher) -> Instance:
    instance = launch_shared(EXAMPLES / "streaming", env={"MODELPORT_WS_MAX_BYTES": "2000000"})
    instance.wait_healthy()
    return instance


@pytest.fixture(scope="module")
def chat(launch_shared: Launcher, tmp_path_factory: pytest.TempPathFactory) -> tuple[Instance, Path]:
    root = tmp_path_factory.mktemp("pkg")
    marker = root / "hook-ended"
    config = {"model_type": "Custom", "apis": [{"url": "/"}, {"url": "/ws/chat"}]}
    package = write_package(root / "chat", config, {"customize_service.py": ASYNC_HOOK})
    instance = launch_shared(package, env={"TEST_WS_MARKER": str(marker)})
    instance.wait_healthy()
    return instance, marker


def _serve(launch: Launcher, root: Path, handler: str) -> Instance:
    instance = launch(write_package(root, {"model_type": "Custom"}, {"customize_service.py": handler}))
    instance.wait_healthy()
    return instance


def _ws(instance: Instance, path: str = "/") -> ClientConnection:
    return connect(f"ws://127.0.0.1:{instance.port}{path}", max_size=None, open_timeout=5, close_timeout=5)


def _closed_with(ws: ClientConnection) -> tuple[int, str]:
    """The code and reason of the close frame the server sent."""
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_example_chat_round_trips_text_binary_and_1mb(example: Instance) -> None:
    with _ws(example, "/chat") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"  # text stays text
        ws.send(b"\x00\xff\x10")
        assert ws.recv(timeout=5) == b"\x00\xff\x10"  # bytes stay bytes
        big = os.urandom(1024 * 1024)
        ws.send(big)
        assert ws.recv(timeout=10) == big
        text = "é" * (300 * 1024)  # 600 KB of UTF-8 text, well above 64 KB
        ws.send(text)
        assert ws.recv(timeout=10) == text
        ws.send(json.dumps({"prompt": "hi there", "max_tokens": 3, "interval": 0.01}))
        replies = [json.loads(ws.recv(timeout=5)) for _ in range(4)]
        assert [r.get("token") for r in replies[:3]] == ["hi", "there", "the"]
        assert replies[3] == {"done": True}


def test_fragmented_message_is_joined(example: Instance) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(20)]  # one 1.25 MB message in 64 KB frames
    with _ws(example, "/chat") as ws:
        ws.send(chunks)
        assert ws.recv(timeout=10) == b"".join(chunks)


def test_message_over_the_limit_closes_1009(example: Instance) -> None:
    with _ws(example, "/chat") as ws:
        ws.send(b"x" * 2_500_000)  # MODELPORT_WS_MAX_BYTES is 2,000,000 here
        code, _ = _closed_with(ws)
    assert code == 1009


def test_hook_end_closes_1000(chat: tuple[Instance, Path]) -> None:
    instance, _ = chat
    with _ws(instance, "/ws/chat/") as ws:  # any API url, trailing slash or not
        ws.send("json")
        assert json.loads(ws.recv(timeout=5)) == {"reply": [1, 2]}
        ws.send("bye")
        assert _closed_with(ws) == (1000, "")


def test_hook_error_closes_1011_with_the_reason(chat: tuple[Instance, Path]) -> None:
    instance, _ = chat
    with _ws(instance) as ws:
        ws.send("fail")
        code, reason = _closed_with(ws)
    assert code == 1011
    assert reason.startswith("MR.0105 ValueError: cannot answer xxx")
    assert len(reason.encode()) <= 123 and reason.endswith("...")
    assert "ValueError: cannot answer" in instance.log()  # the traceback is logged


def test_client_close_ends_the_messages(chat: tuple[Instance, Path]) -> None:
    instance, marker = chat
    before = marker.read_text().count("hook ended") if marker.exists() else 0
    with _ws(instance) as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
    deadline = time.monotonic() + 3
    while not (marker.exists() and marker.read_text().count("hook ended") > before):
        assert time.monotonic() < deadline, "the hook did not end after the client closed"
        time.sleep(0.02)


def test_sync_hook_runs_on_a_thread(launch: Launcher, tmp_path: Path) -> None:
    instance = _serve(launch, tmp_path / "sync", SYNC_HOOK)
    with _ws(instance) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "HI from thread"
        ws.send(b"abc")
        assert ws.recv(timeout=5) == b"cba"
        ws.send("bye")
        assert _closed_with(ws) == (1000, "")
    with _ws(instance) as ws:
        ws.send("fail")
        assert _closed_with(ws) == (1011, "MR.0105 RuntimeError: sync hook broke")
    with _ws(instance) as ws:  # a client that leaves: the thread's iterator ends, the next session works
        ws.send("one")
        assert ws.recv(timeout=5) == "ONE from thread"
    with _ws(instance) as ws:
        ws.send("two")
        assert ws.recv(timeout=5) == "TWO from thread"


def test_upgrade_refused_without_a_hook_or_at_an_unknown_path(
    launch: Launcher, tmp_path: Path, chat: tuple[Instance, Path]
) -> None:
    instance = _serve(launch, tmp_path / "plain", NO_HOOK)
    with pytest.raises(InvalidStatus) as refused:
        _ws(instance)
    assert refused.value.response.status_code == 403
    body = json.loads(bytes(refused.value.response.body))
    assert body["error_code"] == "MP.4405"
    assert "websocket" in body["error_msg"]
    chat_instance, _ = chat
    with pytest.raises(InvalidStatus) as unknown:
        _ws(chat_instance, "/elsewhere")
    assert unknown.value.response.status_code == 404
    assert json.loads(bytes(unknown.value.response.body))["error_code"] == "MP.4404"
    assert "without completing handshake" not in chat_instance.log()  # uvicorn's noise is filtered


def test_sigterm_closes_sessions_1012(launch: Launcher, tmp_path: Path) -> None:
    instance = _serve(launch, tmp_path / "chat", ASYNC_HOOK)
    with _ws(instance) as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        instance.proc.send_signal(signal.SIGTERM)
        assert _closed_with(ws)[0] == 1012  # service restart: the client should reconnect elsewhere
    assert instance.wait_exit() == 0
