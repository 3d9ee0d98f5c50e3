"""The python handler server as a subprocess: health, parsing, routing, errors, load failures, SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from runtime_support import EXAMPLES, Instance, Launcher, write_package

HANDLER = """
import os
import time

import numpy as np
from rt_server_helper import SUFFIX

from modelport import BaseService


class TestService(BaseService):
    def __init__(self, model_name, model_path):
        super().__init__(model_name, model_path)
        gate = os.environ.get("TEST_LOAD_GATE")  # loading lasts until the test creates this file
        deadline = time.monotonic() + 30
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _inference(self, data):
        if isinstance(data, bytes):
            return {"bytes": data.decode()}
        if not isinstance(data, dict):
            return {"value": data}
        if "fail" in data:
            raise ValueError(data["fail"])
        if "sleep" in data:
            if "mark" in data:  # tells the test the request is in flight
                open(data["mark"], "w").close()
            time.sleep(data["sleep"])
            return {"slept": data["sleep"]}
        if "text" in data:
            return data["text"]
        if "numpy" in data:
            return {"array": np.arange(3), "scalar": np.float32(0.5)}
        if "unserialisable" in data:
            return {"x": object()}
        got = {}
        for key, value in data.items():
            if isinstance(value, dict) and value and all(hasattr(f, "read") for f in value.values()):
                value = {name: f.read().hex()[:16] + f"/{f.seek(0, 2)}" for name, f in value.items()}
            got[key] = value
        return {"got": got, "name": self.model_name, "path": self.model_path, "helper": SUFFIX}
"""
CONFIG = {"model_type": "Custom", "model_name": "tm", "apis": [{"url": "/"}, {"url": "/predict/v2"}]}


def test_package(root: Path) -> Path:
    return write_package(root, CONFIG, {"customize_service.py": HANDLER, "rt_server_helper.py": "SUFFIX = 'ok'\n"})


test_package.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def served(launch_shared: Launcher, tmp_path_factory: pytest.TempPathFactory) -> tuple[Instance, dict[str, object]]:
    """One instance for the module, plus what was observed while it loaded."""
    root = tmp_path_factory.mktemp("pkg")
    gate = root / "loaded"
    instance = launch_shared(test_package(root / "tm"), env={"TEST_LOAD_GATE": str(gate)})
    early: dict[str, object] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "health" not in early and instance.proc.poll() is None:
        response = instance.health()
        if response is not None and response.status_code == 503:
            early["health"] = response
            early["predict"] = httpx.post(instance.url + "/", json={"a": 1})
        time.sleep(0.01)
    gate.touch()
    early["seen"] = instance.wait_healthy()
    return instance, early


def _in_flight(instance: Instance, seconds: float, marker: Path) -> tuple[threading.Thread, dict[str, object]]:
    """Start a request that sleeps `seconds` in the handler; returns once the handler runs."""
    result: dict[str, object] = {}

    def post() -> None:
        try:
            body = {"sleep": seconds, "mark": str(marker)}
            result["response"] = httpx.post(instance.url + "/", json=body, timeout=60)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline and thread.is_alive(), f"request not in flight: {result}"
        time.sleep(0.01)
    return thread, result


def _refused(instance: Instance, timeout: float) -> bool:
    """True once a new connection is refused (within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(instance.url + "/health", timeout=1)
        except httpx.ConnectError:
            return True
        time.sleep(0.02)
    return False


def test_health_is_503_while_loading_then_200(served: tuple[Instance, dict[str, object]]) -> None:
    _, early = served
    loading = early["health"]
    assert isinstance(loading, httpx.Response)
    assert loading.json() == {"health": "false", "status": "loading"}
    predict = early["predict"]
    assert isinstance(predict, httpx.Response)
    assert predict.status_code == 503
    assert predict.json()["error_code"] == "MP.4503"
    final = early["seen"][-1]  # type: ignore[index]
    assert (final.status_code, final.json()) == (200, {"health": "true"})


def test_json_predict(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    response = httpx.post(instance.url + "/", json={"a": [1, "é"]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["got"] == {"a": [1, "é"]}
    assert body["name"] == "tm"
    assert Path(body["path"]).name == "model"
    assert body["helper"] == "ok"  # helper module next to customize_service.py imported


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (None, b'{"a": 2}', {"got": {"a": 2}}),  # no content type, JSON body -> decoded
        (None, b"plain words", {"bytes": "plain words"}),  # no content type, not JSON -> bytes
        ("text/plain", b'{"a": 2}', {"bytes": '{"a": 2}'}),  # other types -> raw bytes
        ("application/json; charset=utf-8", b"[1, 2]", {"value": [1, 2]}),
        ("application/json", b"", {"got": {}}),  # empty body -> {}
    ],
)
def test_body_parsing(
    served: tuple[Instance, dict[str, object]],
    content_type: str | None,
    body: bytes,
    expected: dict[str, object],
) -> None:
    instance, _ = served
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(instance.url + "/", content=body, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    for key, value in expected.items():
        assert answer[key] == value


def test_multipart_predict(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    png = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(png, format="PNG")
    big = os.urandom(3 * 1024 * 1024)  # above the in-memory limit: spooled to a temporary file
    files = [("images", ("a.png", png.getvalue(), "image/png")), ("images", ("big.bin", big))]
    response = httpx.post(instance.url + "/", files=files, data={"note": "hi"})
    assert response.status_code == 200, response.text
    got = response.json()["got"]
    assert got["note"] == "hi"
    assert got["images"]["a.png"] == f"{png.getvalue()[:8].hex()}/{len(png.getvalue())}"
    assert got["images"]["big.bin"] == f"{big[:8].hex()}/{len(big)}"


def test_second_api_url_and_trailing_slash(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    assert httpx.post(instance.url + "/predict/v2", json={"b": 1}).json()["got"] == {"b": 1}
    assert httpx.put(instance.url + "/predict/v2/", json={"b": 2}).json()["got"] == {"b": 2}


def test_unknown_path_is_404(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    response = httpx.post(instance.url + "/nope", json={})
    assert response.status_code == 404
    body = response.json()
    assert body["error_code"] == "MP.4404"
    assert "/predict/v2" in body["error_msg"]


def test_malformed_json_is_400(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    response = httpx.post(instance.url + "/", content=b'{"a": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "ModelArts.4105"


def test_malformed_multipart_is_400(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    response = httpx.post(instance.url + "/", content=b"x", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "ModelArts.4200"


def test_model_exception_is_the_models_500(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    response = httpx.post(instance.url + "/", json={"fail": "boom 42"})
    assert response.status_code == 500
    assert response.json() == {"erno": "MR.0105", "msg": "ValueError: boom 42"}
    assert "ValueError: boom 42" in instance.log()  # the traceback is in the instance's log
    response = httpx.post(instance.url + "/", json={"unserialisable": 1})
    assert response.status_code == 500
    assert response.json()["msg"].startswith("TypeError: Object of type object is not JSON serializable")


def test_result_encoding(served: tuple[Instance, dict[str, object]]) -> None:
    instance, _ = served
    assert httpx.post(instance.url + "/", json={"numpy": 1}).json() == {"array": [0, 1, 2], "scalar": 0.5}
    text = httpx.post(instance.url + "/", json={"text": "hello"})
    assert (text.text, text.headers["content-type"]) == ("hello", "text/plain; charset=utf-8")
    json_text = httpx.post(instance.url + "/", json={"text": '{"k": 1}'})
    assert json_text.json() == {"k": 1}


def test_health_answers_during_a_slow_inference(served: tuple[Instance, dict[str, object]], tmp_path: Path) -> None:
    instance, _ = served
    slow, result = _in_flight(instance, 1.0, tmp_path / "started")
    try:
        assert instance.health().status_code == 200  # type: ignore[union-attr]
        assert slow.is_alive()  # answered while the handler was still busy
    finally:
        slow.join()
    assert result["response"].json() == {"slept": 1.0}  # type: ignore[attr-defined]


def test_sigterm_finishes_the_request_in_flight_and_exits_0(launch: Launcher, tmp_path: Path) -> None:
    instance = launch(test_package(tmp_path / "tm"))
    instance.wait_healthy()
    slow, result = _in_flight(instance, 2.0, tmp_path / "started")
    instance.proc.send_signal(signal.SIGTERM)
    assert _refused(instance, timeout=1.5)  # draining: no new connections
    assert slow.is_alive()
    slow.join(timeout=10)
    response = result.get("response")
    assert isinstance(response, httpx.Response), result
    assert (response.status_code, response.json()) == (200, {"slept": 2.0})
    assert instance.wait_exit() == 0


def test_sigterm_grace_period_bounds_a_stuck_request(launch: Launcher, tmp_path: Path) -> None:
    instance = launch(test_package(tmp_path / "tm"), env={"MODELPORT_GRACE_S": "1"})
    instance.wait_healthy()
    slow, result = _in_flight(instance, 30, tmp_path / "started")
    started = time.monotonic()
    instance.proc.send_signal(signal.SIGTERM)
    assert instance.wait_exit(timeout=10) == 0
    assert time.monotonic() - started < 4  # 1 s grace + shutdown, not the handler's 30 s
    slow.join(timeout=5)
    response = result.get("response")  # cut off, and told so
    assert isinstance(response, httpx.Response), result
    assert (response.status_code, response.json()["error_code"]) == (503, "MP.4504")


IMPORT_ERROR = "raise ImportError('libmagic.so.1: cannot open shared object file')\n"


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (IMPORT_ERROR, "ImportError: libmagic.so.1: cannot open shared object file"),
        ("import os\n", "defines no subclass of BaseService"),
        (
            "from modelport import BaseService\nclass S(BaseService):\n"
            "    def __init__(self, model_name, model_path):\n"
            "        raise RuntimeError('weights missing')\n",
            "RuntimeError: weights missing",
        ),
    ],
    ids=["import-error", "no-class", "init-raises"],
)
def test_failed_load_reports_then_exits_nonzero(launch: Launcher, tmp_path: Path, handler: str, expected: str) -> None:
    instance = launch(write_package(tmp_path / "bad", {"model_type": "Custom"}, {"customize_service.py": handler}))
    failed = None
    deadline = time.monotonic() + 10
    while failed is None and instance.proc.poll() is None and time.monotonic() < deadline:
        response = instance.health()
        if response is not None and response.status_code == 500:
            failed = response
        time.sleep(0.02)
    assert failed is not None, instance.log()
    assert failed.json()["health"] == "false"
    assert expected in failed.json()["error"]
    assert instance.wait_exit() != 0
    assert expected in instance.log()
    assert "Traceback" in instance.log()


def test_bad_package_exits_2(launch: Launcher, tmp_path: Path) -> None:
    instance = launch(write_package(tmp_path / "empty", None))
    assert instance.wait_exit() == 2
    assert "ModelArts.3017" in instance.log()
    assert "config.json is missing" in instance.log()


def test_llm_package_goes_to_the_llm_engine(launch: Launcher, tmp_path: Path) -> None:
    # No checkpoint in the package: the LLM engine (not the python runtime) says what is missing.
    instance = launch(write_package(tmp_path / "llm", {"model_type": "LLM"}))
    assert instance.wait_exit() == 2
    assert "no Hugging Face checkpoint here" in instance.log()


def test_command_model(launch: Launcher) -> None:
    instance = launch(EXAMPLES / "command-echo")
    instance.wait_healthy()
    response = httpx.post(instance.url + "/", json={"a": 1})
    assert response.json() == {"echo": {"a": 1}, "greeting": "hello"}  # greeting from config.json envs
    instance.proc.send_signal(signal.SIGTERM)
    assert instance.wait_exit() == 0


def test_command_that_cannot_start_exits_127(launch: Launcher, tmp_path: Path) -> None:
    instance = launch(write_package(tmp_path / "cmd", {"model_type": "Image", "cmd": "./no-such-server"}))
    assert instance.wait_exit() == 127
    assert "cannot start cmd" in instance.log()
