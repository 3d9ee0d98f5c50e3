"""The LLM instance over real HTTP: `python -m modelport.llm PKG` as a subprocess on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.llm.testing import build_package, sample_text

MODEL = "tiny-chat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    def __init__(self, package: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = package / f"instance-{self.port}.log"
        env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "MODELPORT_LLM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelport.llm", str(package)],
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.statuses: list[int] = []

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"instance exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                status = httpx.get(self.url + "/health", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            self.statuses.append(status)
            if status == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"instance not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm-package")
    build_package(root, {"dtype": "float32", "num_kv_blocks": 256, "served_model_name": MODEL, "max_model_len": 1024})
    return root


@pytest.fixture(scope="module")
def instance(package: Path) -> Iterator[Instance]:
    inst = Instance(package)
    try:
        inst.wait_ready()
        yield inst
    finally:
        code = inst.stop()
        assert code == 0, inst.log.read_text()


@pytest.fixture
def client(instance: Instance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=instance.url, timeout=60) as c:
        yield c


def stats(client: httpx.Client) -> dict[str, Any]:
    return client.get("/v1/engine/stats").json()


def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def test_health_is_503_while_loading_then_200(instance: Instance, client: httpx.Client) -> None:
    assert instance.statuses[-1] == 200 and set(instance.statuses) <= {503, 200}
    assert 503 in instance.statuses, "the server answers while the model loads"
    assert client.get("/health").json() == {"health": "true"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]


def test_completion(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "hello world", "temperature": 0, "logprobs": 2}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["model"] == MODEL and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    usage = out["usage"]
    assert usage["completion_tokens"] <= 16  # max_tokens defaults to 16 on /v1/completions
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert choice["finish_reason"] in ("stop", "length")
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == usage["completion_tokens"]
    assert all(len(top) <= 2 for top in lp["top_logprobs"])
    again = client.post("/v1/completions", json=body).json()
    assert again["choices"][0]["text"] == choice["text"]  # greedy


def test_chat_streaming_matches_non_streaming(client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi café 🙂"}],
        "temperature": 0,
        "max_tokens": 12,
    }
    full = client.post("/v1/chat/completions", json=body).json()
    assert full["object"] == "chat.completion"
    message = full["choices"][0]["message"]
    assert message["role"] == "assistant"
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == message["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == full["choices"][0]["finish_reason"] and not any(finishes[:-1])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == full["usage"]["completion_tokens"]
    assert usage["prompt_tokens"] == full["usage"]["prompt_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 16  # the same prompt again: one full block


def test_n_choices_with_seed(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "the model", "n": 2, "max_tokens": 8, "seed": 5, "ignore_eos": True}
    out = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["usage"]["completion_tokens"] == 16
    again = client.post("/v1/completions", json=body).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in out["choices"]]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        events = sse_events(r)[:-1]
    streamed = ["", ""]
    for e in events:
        for c in e["choices"]:
            streamed[c["index"]] += c["text"]
    assert streamed == [c["text"] for c in out["choices"]]


@pytest.mark.parametrize(
    ("path", "patch", "param"),
    [
        ("/v1/completions", {"temperature": -1}, "temperature"),
        ("/v1/completions", {"top_p": 1.5}, "top_p"),
        ("/v1/completions", {"n": 0}, "n"),
        ("/v1/completions", {"n": "many"}, "n"),
        ("/v1/completions", {"max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"max_tokens": 5000}, "max_tokens"),
        ("/v1/completions", {"logprobs": 50}, "logprobs"),
        ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": [999999]}, "prompt"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.Client, path: str, patch: dict[str, Any], param: str
) -> None:
    base: dict[str, Any] = {"model": MODEL}
    base.update({"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]})
    r = client.post(path, json={**base, **patch})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_unknown_model_and_bad_json(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_repeated_long_prompt_reports_cached_tokens(client: httpx.Client) -> None:
    prompt = sample_text(120, seed=11)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    first = client.post("/v1/completions", json=body).json()["usage"]
    second = client.post("/v1/completions", json=body).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % 16 == 0 and cached >= first["prompt_tokens"] - 16
    s = stats(client)
    assert s["prefix_cache_hit_tokens"] >= cached and 0 < s["prefix_cache_hit_rate"] <= 1


def test_client_disconnect_aborts_the_request(client: httpx.Client, instance: Instance) -> None:
    before = stats(client)["requests_finished"].get("abort", 0)
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        next(lines)  # generation started; now hang up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(instance.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    deadline = time.monotonic() + 10
    while stats(client)["requests_finished"].get("abort", 0) < before + 2:
        assert time.monotonic() < deadline, stats(client)
        time.sleep(0.05)
    s = stats(client)
    assert s["num_requests_running"] == 0 and s["kv_blocks_used"] == 0


def test_metrics(client: httpx.Client) -> None:
    client.post("/v1/completions", json={"model": MODEL, "prompt": "metrics", "max_tokens": 3})
    text = client.get("/metrics").text
    for name in (
        "modelport_llm_time_to_first_token_seconds_count",
        "modelport_llm_time_per_output_token_seconds_bucket",
        "modelport_llm_prefix_cache_queries_total",
        "modelport_llm_prefix_cache_hits_total",
        "modelport_llm_num_requests_running",
        "modelport_llm_num_requests_waiting",
        "modelport_llm_kv_blocks_used",
        "modelport_llm_kv_blocks_cached",
        "modelport_llm_num_preemptions_total",
    ):
        assert name in text, name
    ttft = next(
        line for line in text.splitlines() if line.startswith("modelport_llm_time_to_first_token_seconds_count")
    )
    assert float(ttft.split()[-1]) >= 1


def test_official_openai_client(instance: Instance) -> None:
    import openai

    api = openai.OpenAI(base_url=instance.url + "/v1", api_key="x")
    assert [m.id for m in api.models.list()] == [MODEL]
    chat = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 6
    stream = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (
        text == chat.choices[0].message.content and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    )
    comp = api.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in api.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == comp.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        api.completions.create(model=MODEL, prompt="hello", temperature=-2)
    assert err.value.body["param"] == "temperature"


def test_sigterm_lets_the_request_in_flight_finish(package: Path) -> None:
    inst = Instance(package)
    try:
        inst.wait_ready()
        body = {"model": MODEL, "prompt": "bye", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        events: list[Any] = []

        def consume() -> None:
            with httpx.stream("POST", inst.url + "/v1/completions", json=body, timeout=60) as r:
                events.extend(sse_events(r))

        reader = threading.Thread(target=consume)
        reader.start()
        time.sleep(0.3)
        inst.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert reader.is_alive(), "the stream should still be running when SIGTERM arrives"
        reader.join(60)
        assert events and events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert inst.proc.wait(30) == 0
    finally:
        inst.stop()


def test_failed_load_answers_500_then_exits_1(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "model" / "weights").mkdir(parents=True)
    (root / "model" / "config.json").write_text(json.dumps({"model_type": "LLM", "model_algorithm": "x"}))
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "intermediate_size": 8,
    }
    (root / "model" / "weights" / "config.json").write_text(json.dumps(hf))  # no weights, no tokenizer
    inst = Instance(root)
    try:
        deadline = time.monotonic() + 60
        health = None
        while inst.proc.poll() is None and time.monotonic() < deadline:
            try:
                r = httpx.get(inst.url + "/health", timeout=2)
                if r.status_code == 500:
                    health = r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert inst.proc.wait(30) == 1
        assert health is not None and health["health"] == "false" and health["error"]
    finally:
        inst.stop()
