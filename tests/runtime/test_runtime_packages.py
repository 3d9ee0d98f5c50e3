"""load_package: what a valid package turns into, and the error (code + message) for each bad one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from runtime_support import EXAMPLES, write_package

from modelport.errors import PlatformError
from modelport.packages import HealthConfig, load_package

HANDLER = {"customize_service.py": "from modelport import BaseService\nclass S(BaseService):\n    pass\n"}
IMAGE = {"model_type": "Image", "cmd": "python3 server.py"}


def test_engine_package_runs_in_python_runtime(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg", {"model_type": "PyTorch", "model_algorithm": "x"}, HANDLER)
    package = load_package(root)
    assert package.runtime_kind == "python"
    assert package.model_dir == root / "model"
    assert package.model_name == "pkg"  # no model_name in config.json: the directory's name
    assert package.api_urls == ("/",)
    assert package.instance_argv("py") == ["py", "-m", "modelport.runtime", str(root)]
    assert package.health == HealthConfig()  # initial delay 0: our runtime answers 503 while loading
    assert package.instance_env() == {"PYTHONUNBUFFERED": "1"}


def test_python_runtime_takes_health_timings_but_serves_its_own_url(tmp_path: Path) -> None:
    config = {
        "model_type": "Custom",
        "health": {"url": "/ping", "period_seconds": "2", "failure_threshold": 3},
    }
    package = load_package(write_package(tmp_path, config, HANDLER))
    assert package.health == HealthConfig(url="/health", period_seconds=2.0, failure_threshold=3)


def test_command_package(tmp_path: Path) -> None:
    config = {
        **IMAGE,
        "cmd": "python3 server.py --name 'a b'",
        "port": "9000",
        "envs": {"A": "1", "B": 2},
        "health": {"check_method": "EXEC", "command": "cat /tmp/ok", "timeout_seconds": "3"},
        "apis": [{"url": "/predict"}],
    }
    package = load_package(write_package(tmp_path, config))
    assert package.runtime_kind == "command"
    assert package.command == ("python3", "server.py", "--name", "a b")
    assert package.instance_argv() == ["python3", "server.py", "--name", "a b"]
    assert package.port == 9000
    assert package.envs == {"A": "1", "B": "2"}
    assert package.instance_env() == {"A": "1", "B": "2"}
    assert package.health == HealthConfig(
        check_method="EXEC", command=("cat", "/tmp/ok"), initial_delay_seconds=12.0, timeout_seconds=3.0
    )
    assert package.apis == [{"url": "/predict", "method": "post"}]


def test_command_defaults_follow_the_spec_console(tmp_path: Path) -> None:
    package = load_package(write_package(tmp_path, {**IMAGE, "cmd": ["./run", "--x"]}))
    assert package.command == ("./run", "--x")
    assert package.port == 8080
    assert package.health == HealthConfig(initial_delay_seconds=12.0, period_seconds=5.0, failure_threshold=12)


def test_llm_is_classified(tmp_path: Path) -> None:
    package = load_package(write_package(tmp_path, {"model_type": "LLM"}))
    assert package.runtime_kind == "llm"


@pytest.mark.parametrize("example", ["echo", "command-echo", "digits"])
def test_examples_are_valid(example: str) -> None:
    assert load_package(EXAMPLES / example).model_type in ("Custom", "Image", "Scikit_Learn")


def test_instance_argv_defaults_to_this_interpreter(tmp_path: Path) -> None:
    package = load_package(write_package(tmp_path, {"model_type": "Scikit_Learn"}, HANDLER))
    assert package.instance_argv()[0] == sys.executable


BAD_CONFIGS: list[tuple[str, Any, dict[str, str], str, list[str]]] = [
    # (id, config.json content (dict or raw text), files, code, words the message must contain)
    ("not-json", "{model_type: PyTorch", HANDLER, "ModelArts.3015", ["not valid JSON", "line 1"]),
    ("not-object", "[1, 2]", HANDLER, "ModelArts.3015", ["JSON object", "list"]),
    ("no-model-type", {"model_algorithm": "x"}, HANDLER, "ModelArts.3015", ["'model_type' is required"]),
    ("unknown-type", {"model_type": "Keras"}, HANDLER, "ModelArts.3016", ["'Keras'", "PyTorch", "Image"]),
    ("wrong-case", {"model_type": "pytorch"}, HANDLER, "ModelArts.3016", ["case-sensitive"]),
    ("template", {"model_type": "Template"}, HANDLER, "ModelArts.3016", ["'Template'"]),
    ("no-handler", {"model_type": "PyTorch"}, {}, "ModelArts.3017", ["customize_service.py", "PyTorch"]),
    (
        "algo-not-str",
        {"model_type": "Custom", "model_algorithm": 3},
        HANDLER,
        "ModelArts.3015",
        ["model_algorithm"],
    ),
    ("no-cmd", {"model_type": "Image"}, {}, "ModelArts.3015", ["'cmd'", "$PORT"]),
    ("swr", {"model_type": "Image", "swr_location": "x/y:1"}, {}, "ModelArts.3015", ["'cmd'", "images"]),
    ("empty-cmd", {**IMAGE, "cmd": "  "}, {}, "ModelArts.3015", ["'cmd' is empty"]),
    ("cmd-type", {**IMAGE, "cmd": {"a": 1}}, {}, "ModelArts.3015", ["'cmd'", "list of strings"]),
    ("cmd-quotes", {**IMAGE, "cmd": "python3 'x"}, {}, "ModelArts.3015", ["'cmd'", "quotes"]),
    ("bad-port", {**IMAGE, "port": "http"}, {}, "ModelArts.3015", ["'port'", "whole number"]),
    ("port-range", {**IMAGE, "port": 70000}, {}, "ModelArts.3015", ["'port'", "1-65535"]),
    ("health-type", {**IMAGE, "health": "/health"}, {}, "ModelArts.3015", ["'health'"]),
    (
        "negative",
        {**IMAGE, "health": {"initial_delay_seconds": "-1"}},
        {},
        "ModelArts.3015",
        ["health.initial_delay_seconds", ">= 0"],
    ),
    (
        "zero-period",
        {**IMAGE, "health": {"period_seconds": 0}},
        {},
        "ModelArts.3015",
        ["health.period_seconds", "> 0"],
    ),
    (
        "non-numeric",
        {**IMAGE, "health": {"timeout_seconds": "five"}},
        {},
        "ModelArts.3015",
        ["health.timeout_seconds", "number"],
    ),
    (
        "bool-number",
        {**IMAGE, "health": {"timeout_seconds": True}},
        {},
        "ModelArts.3015",
        ["health.timeout_seconds"],
    ),
    (
        "threshold",
        {**IMAGE, "health": {"failure_threshold": "0"}},
        {},
        "ModelArts.3015",
        ["health.failure_threshold", ">= 1"],
    ),
    (
        "threshold-frac",
        {**IMAGE, "health": {"failure_threshold": "1.5"}},
        {},
        "ModelArts.3015",
        ["health.failure_threshold", "whole number"],
    ),
    (
        "check-method",
        {**IMAGE, "health": {"check_method": "TCP"}},
        {},
        "ModelArts.3015",
        ["health.check_method", "HTTP", "EXEC"],
    ),
    (
        "exec-no-command",
        {**IMAGE, "health": {"check_method": "EXEC"}},
        {},
        "ModelArts.3015",
        ["health.command"],
    ),
    ("health-url", {**IMAGE, "health": {"url": "health"}}, {}, "ModelArts.3015", ["health.url", "'/'"]),
    ("envs-type", {**IMAGE, "envs": ["A=1"]}, {}, "ModelArts.3015", ["'envs'"]),
    ("envs-port", {**IMAGE, "envs": {"PORT": "1"}}, {}, "ModelArts.3015", ["envs.PORT", "platform"]),
    ("envs-value", {**IMAGE, "envs": {"A": {"b": 1}}}, {}, "ModelArts.3015", ["envs.A", "string"]),
    ("envs-name", {**IMAGE, "envs": {"A=B": "1"}}, {}, "ModelArts.3015", ["'A=B'", "environment variable"]),
    ("apis-type", {**IMAGE, "apis": {"url": "/"}}, {}, "ModelArts.3015", ["'apis'", "list"]),
    ("api-url", {**IMAGE, "apis": [{"url": "predict"}]}, {}, "ModelArts.3015", ["apis[0].url", "'/'"]),
    (
        "api-health",
        {"model_type": "Custom", "apis": [{"url": "/health"}]},
        HANDLER,
        "ModelArts.3015",
        ["apis[0].url", "/health"],
    ),
]


@pytest.mark.parametrize(
    ("config", "files", "code", "words"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_is_refused_with_a_helpful_error(
    tmp_path: Path, config: Any, files: dict[str, str], code: str, words: list[str]
) -> None:
    root = write_package(tmp_path, None, files)
    (root / "model" / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(PlatformError) as info:
        load_package(root)
    assert info.value.code == code
    for word in words:
        assert word in info.value.message, info.value.message
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ("missing", ["not a directory"]),
        ("no-model-dir", ["no model/ directory"]),
        ("no-config", ["config.json is missing"]),
    ],
)
def test_bad_source_location(tmp_path: Path, layout: str, words: list[str]) -> None:
    root = tmp_path / "pkg"
    if layout != "missing":
        root.mkdir()
    if layout == "no-config":
        (root / "model").mkdir()
    with pytest.raises(PlatformError) as info:
        load_package(root)
    assert info.value.code == "ModelArts.3017"
    assert str(root) in info.value.message
    for word in words:
        assert word in info.value.message
