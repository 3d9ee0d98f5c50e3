"""Streaming handlers over HTTP: SSE and JSON lines event by event, keep-alives, errors, client disconnects."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from runtime_support import EXAMPLES, Instance, Launcher, write_package

from modelport.errors import PlatformError
from modelport.packages import StreamConfig, load_package

HANDLER = """
import asyncio
import time

from modelport import BaseService


class StreamService(BaseService):
    def _inference(self, data):
        kind = data.get("kind")
        if kind == "plain":
            return {"plain": True}
        if kind == "async":
            return self._async(data["n"], data["interval"], data.get("marker"))
        if kind == "idle":
            return self._idle(data["pause"])
        if kind == "fail_first":
            return self._fail_after(0)
        if kind == "fail_after":
            return self._fail_after(2)
        if kind == "shapes":
            return iter(["plain text", "two\\nlines", b"event: custom\\ndata: raw\\n\\n", {"k": [1, "é"]}, 7])
        return self._sync(data["n"], data["interval"], data.get("marker"))

    def _sync(self, n, interval, marker):
        try:
            for i in range(n):
                time.sleep(interval)
                yield {"i": i}
        except GeneratorExit:
            open(marker, "w").write("GeneratorExit")
            raise

    async def _async(self, n, interval, marker):
        try:
            for i in range(n):
                await asyncio.sleep(interval)
                yield {"i": i}
        finally:
            if marker:
                open(marker, "w").write("closed")

    def _idle(self, pause):
        time.sleep(pause)
        yield "first"
        time.sleep(pause)
        yield "second"

    def _fail_after(self, k):
        for i in range(k):
            yield {"i": i}
        raise ValueError(f"broke after {k}")
"""
CONFIG = {"model_type": "Custom", "model_name": "st", "stream": {"keepalive_s": 0.3}}


@pytest.fixture(scope="module")
def served(launch_shared: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Instance:
    root = tmp_path_factory.mktemp("pkg") / "st"
    instance = launch_shared(write_package(root, CONFIG, {"customize_service.py": HANDLER}))
    instance.wait_healthy()
    return instance


@pytest.fixture(scope="module")
def example(launch_shared: Launcher) -> Instance:
    instance = launch_shared(EXAMPLES / "streaming")
    instance.wait_healthy()
    return instance


def _events(instance: Instance, body: dict[str, object], accept: str | None = None) -> list[tuple[float, str]]:
    """(arrival time, line) of every non-empty line of the streamed response."""
    headers = {"accept": accept} if accept else {}
    seen = []
    with httpx.stream("POST", instance.url + "/", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line:
                seen.append((time.monotonic(), line))
    return seen


def test_sse_events_arrive_spaced_not_in_one_lump(example: Instance) -> None:
    events = _events(example, {"prompt": "hello world", "max_tokens": 20, "interval": 0.05})
    data = [line for _, line in events]
    assert data[-1] == "data: [DONE]"  # the example turns done events on
    tokens = [json.loads(line.removeprefix("data: ")) for line in data[:-1]]
    assert [t["index"] for t in tokens] == list(range(20))
    assert [t["token"] for t in tokens[:2]] == ["hello", "world"]
    times = [t for t, _ in events[:-1]]
    assert times[-1] - times[0] >= 0.8  # 19 gaps of 50 ms, as produced
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(gap < 0.005 for gap in gaps) <= 2, gaps  # each event went out on its own


def test_sse_headers(example: Instance) -> None:
    body = {"max_tokens": 1, "interval": 0}
    with httpx.stream("POST", example.url + "/", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream;charset=UTF-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-length" not in response.headers  # chunked: the body is open-ended
        response.read()


def test_ndjson_when_the_client_asks(example: Instance) -> None:
    events = _events(example, {"max_tokens": 5, "interval": 0.01}, accept="application/x-ndjson")
    assert [json.loads(line)["index"] for _, line in events] == list(range(5))  # no [DONE] in ndjson
    with httpx.stream(
        "POST", example.url + "/", json={"max_tokens": 1}, headers={"accept": "application/x-ndjson"}
    ) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        response.read()
    # Both accepted: the first listed wins.
    both = _events(example, {"max_tokens": 1}, accept="text/event-stream, application/x-ndjson")
    assert both[0][1].startswith("data: ")


def test_done_event_is_off_by_default(served: Instance) -> None:
    events = _events(served, {"n": 3, "interval": 0})
    assert [line for _, line in events] == ['data: {"i": 0}', 'data: {"i": 1}', 'data: {"i": 2}']


def test_item_shapes_on_the_wire(served: Instance) -> None:
    response = httpx.post(served.url + "/", json={"kind": "shapes"})
    assert response.text == (
        "data: plain text\n\n"
        "data: two\ndata: lines\n\n"  # one data line per line of a str
        "event: custom\ndata: raw\n\n"  # bytes go raw
        'data: {"k": [1, "é"]}\n\n'
        "data: 7\n\n"
    )
    lines = httpx.post(served.url + "/", json={"kind": "shapes"}, headers={"accept": "application/x-ndjson"})
    assert lines.text.splitlines()[:2] == ['"plain text"', '"two\\nlines"']
    assert lines.text.endswith('{"k": [1, "é"]}\n7\n')


def test_async_generator_streams_and_is_closed_on_disconnect(served: Instance, tmp_path: Path) -> None:
    events = _events(served, {"kind": "async", "n": 4, "interval": 0.01})
    assert [json.loads(line.removeprefix("data: "))["i"] for _, line in events] == [0, 1, 2, 3]
    marker = tmp_path / "async-closed"
    _read_then_disconnect(served, {"kind": "async", "n": 1000, "interval": 0.05, "marker": str(marker)}, 2)
    _wait_for(lambda: marker.exists(), 3, "the async generator was not closed")
    assert marker.read_text() == "closed"


def test_client_disconnect_closes_the_generator(served: Instance, tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    started = time.monotonic()
    _read_then_disconnect(served, {"n": 1000, "interval": 0.05, "marker": str(marker)}, 3)
    _wait_for(lambda: marker.exists(), 3, "the generator never saw GeneratorExit")
    assert marker.read_text() == "GeneratorExit"
    assert time.monotonic() - started < 3  # not after the 50 s the full stream would take
    # The handler thread is free again: a plain prediction is answered.
    assert httpx.post(served.url + "/", json={"kind": "plain"}).json() == {"plain": True}


def test_example_records_the_disconnect(example: Instance) -> None:
    _read_then_disconnect(example, {"max_tokens": 500, "interval": 0.02}, 3)
    _wait_for(lambda: "stream cancelled by the client after" in example.log(), 3, example.log())
    line = next(x for x in example.log().splitlines() if "stream cancelled" in x)
    sent = int(line.split("after ")[1].split(" of")[0])
    assert 3 <= sent < 50, line


def test_keepalive_comments_on_an_idle_stream(served: Instance) -> None:
    started = time.monotonic()
    raw = _raw_stream(served, {"kind": "idle", "pause": 1.0})
    assert time.monotonic() - started >= 2.0
    # Headers go out with the first keep-alive, long before the first item.
    before, _, after = raw.partition("data: first\n\n")
    assert before.count(": keep-alive\n\n") >= 2, raw
    assert after.count(": keep-alive\n\n") >= 2, raw
    assert after.endswith("data: second\n\n")


def test_failure_before_the_first_item_is_a_plain_500(served: Instance) -> None:
    response = httpx.post(served.url + "/", json={"kind": "fail_first"})
    assert response.status_code == 500
    assert response.json() == {"erno": "MR.0105", "msg": "ValueError: broke after 0"}


def test_failure_mid_stream_ends_with_an_error_event(served: Instance) -> None:
    response = httpx.post(served.url + "/", json={"kind": "fail_after"})
    assert response.status_code == 200
    assert response.text.endswith('event: error\ndata: {"erno": "MR.0105", "msg": "ValueError: broke after 2"}\n\n')
    assert response.text.startswith('data: {"i": 0}\n\ndata: {"i": 1}\n\n')
    lines = httpx.post(
        served.url + "/", json={"kind": "fail_after"}, headers={"accept": "application/x-ndjson"}
    ).text.splitlines()
    assert json.loads(lines[-1]) == {"erno": "MR.0105", "msg": "ValueError: broke after 2"}
    assert "ValueError: broke after 2" in served.log()  # with its traceback


def test_health_and_predictions_answer_while_streams_run(served: Instance) -> None:
    body = {"kind": "async", "n": 30, "interval": 0.05}
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(len(_events(served, body)))) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert served.health().status_code == 200  # type: ignore[union-attr]
    assert httpx.post(served.url + "/", json={"kind": "plain"}).json() == {"plain": True}
    for thread in threads:
        thread.join(10)
    assert results == [30, 30, 30]


def test_sigterm_past_the_grace_period_ends_the_stream_with_mp4504(launch: Launcher, tmp_path: Path) -> None:
    instance = launch(
        write_package(tmp_path / "st", CONFIG, {"customize_service.py": HANDLER}), env={"MODELPORT_GRACE_S": "1"}
    )
    instance.wait_healthy()
    lines: list[str] = []

    def read() -> None:
        with httpx.stream("POST", instance.url + "/", json={"n": 1000, "interval": 0.05}, timeout=30) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    _wait_for(lambda: len(lines) >= 3, 3, "the stream did not start")
    instance.proc.send_signal(signal.SIGTERM)
    assert instance.wait_exit(timeout=10) == 0
    reader.join(5)
    assert lines[0] == 'data: {"i": 0}'
    assert lines[-2:] == ["event: error", lines[-1]]
    assert json.loads(lines[-1].removeprefix("data: "))["error_code"] == "MP.4504"  # the platform's, not the model's
    assert "Exception in ASGI application" not in instance.log()


def test_stream_config_is_validated_at_import(tmp_path: Path) -> None:
    files = {"customize_service.py": "x = 1\n"}
    ok = load_package(write_package(tmp_path / "ok", {"model_type": "Custom"}, files))
    assert ok.stream == StreamConfig(done_event=False, keepalive_s=15.0)
    custom = {"model_type": "Custom", "stream": {"done_event": True, "keepalive_s": "2.5"}}
    assert load_package(write_package(tmp_path / "c", custom, files)).stream == StreamConfig(True, 2.5)
    for bad, expected in [
        ({"done_event": "yes"}, "stream.done_event"),
        ({"keepalive_s": -1}, "stream.keepalive_s"),
        ([1], "field 'stream'"),
    ]:
        root = write_package(tmp_path / f"bad{len(expected)}", {"model_type": "Custom", "stream": bad}, files)
        with pytest.raises(PlatformError, match=expected) as err:
            load_package(root)
        assert err.value.code == "ModelArts.3015"


def _read_then_disconnect(instance: Instance, body: dict[str, object], events: int) -> None:
    """Read `events` events of a stream, then drop the connection."""
    with socket.create_connection(("127.0.0.1", instance.port), timeout=5) as sock:
        payload = json.dumps(body).encode()
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while received.count(b"data: ") < events:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk


def _raw_stream(instance: Instance, body: dict[str, object]) -> str:
    """The de-chunked body of a streamed response, comments included."""
    with httpx.stream("POST", instance.url + "/", json=body, timeout=30) as response:
        return response.read().decode()


def _wait_for(condition: object, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        time.sleep(0.02)
