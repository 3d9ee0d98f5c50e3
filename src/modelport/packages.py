"""Model packages: parse and validate `model/config.json` and say how to run one instance of it.

A package is a directory holding `model/` (spec §3.1); that directory is a model's
`source_location`. `load_package` is the only reader of config.json: the control plane calls
it at import time (so a bad package is refused with a 4xx before anything starts) and the
instance runtime calls it again at start-up.

What config.json may say, beyond the spec's own fields (§3.2):

* `model_type` picks the runtime. The engine types of the spec (TensorFlow, PyTorch,
  MindSpore, MXNet, Caffe, Spark_MLlib, Scikit_Learn, XGBoost) and `Custom` run in the
  `python` runtime and need `model/customize_service.py`; `Image` runs a user `command`;
  `LLM` runs the built-in LLM engine.
* `Image` models carry their start command, since there is no container image to take it
  from. The field is ours (the spec's CreateModel has a `cmd` string with the same meaning):

  - `"cmd"`: `"python3 server.py --x 1"` (shlex-split) or `["python3", "server.py"]`;
    it runs with the working directory `model/`;
  - `"port"`: `"8080"` or `8080` (default 8080) — only documentation of what the server
    listens on by default: the platform always tells the instance its port and address in
    `$PORT` and `$HOST`, and a command model MUST listen there (the instance contract;
    8080 when `$PORT` is unset);
  - `"envs"`: `{"NAME": "value"}`, extra environment of the instance (any model type).
    They are defaults: the environment the instance is started with wins. `PORT` and `HOST`
    are the platform's and cannot be set here.
* `health` (spec §3.2 and §2.2): `url`, `check_method` (`HTTP` or `EXEC` with `command`),
  `initial_delay_seconds`, `timeout_seconds`, `period_seconds`, `failure_threshold`;
  numbers may be strings, as in the spec's examples. The `python` runtime always serves
  `GET /health` itself (503 until the model is loaded), so for it only the timings are taken
  and the initial delay defaults to 0; command models default to the spec's console values.
* `stream` (ours; python runtime): how a handler that returns a generator is streamed —
  `{"done_event": false, "keepalive_s": 15}`. `done_event: true` ends every Server-Sent
  Events stream with `data: [DONE]`; `keepalive_s` is the silence after which a `: keep-alive`
  comment is sent so proxies keep an idle stream open (0 turns it off).
* `model_algorithm` is required by the spec; a missing one defaults to `unknown_algorithm`.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelport.errors import E, PlatformError

ENGINE_TYPES = frozenset(
    {
        "TensorFlow",
        "PyTorch",
        "MindSpore",
        "MXNet",
        "Caffe",
        "Spark_MLlib",
        "Scikit_Learn",
        "XGBoost",
        "Custom",
    }
)
COMMAND_TYPES = frozenset({"Image"})
LLM_TYPES = frozenset({"LLM"})
SUPPORTED_TYPES = ENGINE_TYPES | COMMAND_TYPES | LLM_TYPES

DEFAULT_PORT = 8080
HANDLER_FILE = "customize_service.py"
RESERVED_ENVS = frozenset({"PORT", "HOST"})


@dataclass(frozen=True)
class HealthConfig:
    """How the orchestrator probes an instance (spec ModelHealth); defaults are the console's."""

    check_method: str = "HTTP"  # "HTTP" | "EXEC"
    url: str = "/health"
    command: tuple[str, ...] | None = None  # for EXEC
    initial_delay_seconds: float = 0.0
    timeout_seconds: float = 5.0
    period_seconds: float = 5.0
    failure_threshold: int = 12


@dataclass(frozen=True)
class StreamConfig:
    """How the python runtime streams a handler's generator (config.json `stream`)."""

    done_event: bool = False  # end SSE streams with `data: [DONE]`
    keepalive_s: float = 15.0  # silence before a keep-alive comment; 0 = never


# Spec §4 console defaults for custom images: their servers may need a while before they even listen.
COMMAND_HEALTH_DEFAULTS = HealthConfig(initial_delay_seconds=12.0)
# Our python runtime answers /health (503) from its first moment, so probing can start at once.
PYTHON_HEALTH_DEFAULTS = HealthConfig(initial_delay_seconds=0.0)


@dataclass(frozen=True)
class ModelPackage:
    """A validated model package. Plain data: safe to pass between parts and to re-create."""

    root: Path  # the directory holding model/  (== source_location)
    model_dir: Path  # root / "model"
    config: dict[str, Any]  # parsed config.json
    model_type: str  # as written in config.json
    runtime_kind: str  # "python" | "command" | "llm"
    command: tuple[str, ...] | None  # for command models
    port: int | None  # declared port of command models; the platform overrides it via $PORT
    envs: dict[str, str] = field(default_factory=dict)
    health: HealthConfig = field(default_factory=HealthConfig)
    apis: list[dict[str, Any]] = field(default_factory=list)
    stream: StreamConfig = field(default_factory=StreamConfig)

    @property
    def model_name(self) -> str:
        """config.json's `model_name`, else the package directory's name."""
        name = self.config.get("model_name")
        return name if isinstance(name, str) and name else self.root.name

    @property
    def model_algorithm(self) -> str:
        algo = self.config.get("model_algorithm")
        return algo if isinstance(algo, str) and algo else "unknown_algorithm"

    @property
    def api_urls(self) -> tuple[str, ...]:
        """The inference paths the instance serves (`/` when config.json declares none)."""
        urls = tuple(dict.fromkeys(api.get("url", "/") for api in self.apis))
        return urls or ("/",)

    def instance_argv(self, python: str = sys.executable) -> list[str]:
        """The command that runs ONE instance of this package.

        Run it with cwd = `model_dir` and `$PORT`/`$HOST` set; add `instance_env()`.
        """
        if self.runtime_kind == "command":
            assert self.command is not None
            return list(self.command)
        if self.runtime_kind == "llm":
            return [python, "-m", "modelport.llm", str(self.root)]
        return [python, "-m", "modelport.runtime", str(self.root)]

    def instance_env(self) -> dict[str, str]:
        """Extra environment the instance needs (the backend adds PORT and HOST)."""
        env = dict(self.envs)
        if self.runtime_kind in ("python", "llm"):
            # Instance output goes to log files; unbuffered so a crash's last lines are not lost.
            env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def load_package(root: Path) -> ModelPackage:
    """Read and validate the package at `root` (the directory holding `model/`).

    Raises `PlatformError` with MODEL_SOURCE_INVALID (files missing), MODEL_CONFIG_INVALID
    (config.json malformed or a field has a bad value) or MODEL_CONFIG_UNSUPPORTED (a value
    we do not support); the message names the file and field and says what to do.
    """
    root = Path(root)
    model_dir = root / "model"
    config_path = model_dir / "config.json"
    if not root.is_dir():
        raise _source(root, "it is not a directory. Point it at the directory that holds model/.")
    if not model_dir.is_dir():
        raise _source(root, "it has no model/ directory. A package is <dir>/model/config.json (+ code, weights).")
    if not config_path.is_file():
        raise _source(root, "model/config.json is missing. Every package needs exactly one.")
    config = _read_config(config_path)

    model_type = config.get("model_type")
    if model_type is None:
        raise _invalid('field \'model_type\' is required (e.g. "Scikit_Learn", "PyTorch", "Image").')
    if not isinstance(model_type, str) or model_type not in SUPPORTED_TYPES:
        raise PlatformError(
            E.MODEL_CONFIG_UNSUPPORTED,
            detail=f"model_type {model_type!r}; use one of {', '.join(sorted(SUPPORTED_TYPES))} (case-sensitive).",
        )
    _check_str(config, "model_algorithm")
    _check_str(config, "model_name")
    apis = _parse_apis(config.get("apis"))
    envs = _parse_envs(config.get("envs"))
    stream = _parse_stream(config.get("stream"))

    if model_type in ENGINE_TYPES:
        for i, api in enumerate(apis):
            if api["url"] == "/health":
                raise _invalid(f"apis[{i}].url: /health is the health check of the instance; pick another url.")
        if not (model_dir / HANDLER_FILE).is_file():
            raise _source(root, f"model/{HANDLER_FILE} is missing; model_type {model_type} needs it (spec §3.3).")
        health = _parse_health(config.get("health"), PYTHON_HEALTH_DEFAULTS)
        # Our server answers GET /health itself; only the probe timings are the package's to choose.
        health = replace(health, check_method="HTTP", url="/health", command=None)
        return ModelPackage(root, model_dir, config, model_type, "python", None, None, envs, health, apis, stream)
    if model_type in COMMAND_TYPES:
        command = _parse_command(config.get("cmd"), config)
        port = _parse_port(config.get("port", DEFAULT_PORT))
        health = _parse_health(config.get("health"), COMMAND_HEALTH_DEFAULTS)
        return ModelPackage(root, model_dir, config, model_type, "command", command, port, envs, health, apis)
    return ModelPackage(root, model_dir, config, model_type, "llm", None, None, envs, PYTHON_HEALTH_DEFAULTS, apis)


def _source(root: Path, detail: str) -> PlatformError:
    return PlatformError(E.MODEL_SOURCE_INVALID, location=str(root), detail=detail)


def _invalid(detail: str) -> PlatformError:
    return PlatformError(E.MODEL_CONFIG_INVALID, detail=detail)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise _invalid(f"{path} is not UTF-8 text ({exc}).") from exc
    except json.JSONDecodeError as exc:
        raise _invalid(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from exc
    if not isinstance(config, dict):
        raise _invalid(f"{path} must hold a JSON object {{...}}, not a {type(config).__name__}.")
    return config


def _check_str(config: dict[str, Any], name: str) -> None:
    value = config.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"field '{name}' must be a string, got {json.dumps(value)}.")


def _parse_apis(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid('field \'apis\' must be a list of API objects like {"url": "/", "method": "post"}.')
    apis = []
    for i, api in enumerate(raw):
        if not isinstance(api, dict):
            raise _invalid(f'apis[{i}] must be an object like {{"url": "/", "method": "post"}}.')
        url = api.get("url", "/")
        if not isinstance(url, str) or not url.startswith("/"):
            raise _invalid(f"apis[{i}].url must be a path starting with '/', got {json.dumps(url)}.")
        method = api.get("method", "post")
        if not isinstance(method, str) or not method:
            raise _invalid(f'apis[{i}].method must be a string such as "post", got {json.dumps(method)}.')
        apis.append({**api, "url": url, "method": method.lower()})
    return apis


def _parse_envs(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _invalid("field 'envs' must be an object of NAME: \"value\" strings.")
    envs = {}
    for name, value in raw.items():
        if not name or "=" in name or "\0" in name:
            raise _invalid(f"envs: {name!r} is not a valid environment variable name.")
        if name in RESERVED_ENVS:
            raise _invalid(f"envs.{name} is set by the platform (the instance contract); remove it.")
        # Numbers are accepted because the spec writes numbers as strings and people mix the two.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _invalid(f"envs.{name} must be a string, got {json.dumps(value)}.")
        envs[name] = str(value)
    return envs


def _parse_stream(raw: Any) -> StreamConfig:
    if raw is None:
        return StreamConfig()
    if not isinstance(raw, dict):
        raise _invalid('field \'stream\' must be an object like {"done_event": true, "keepalive_s": 15}.')
    done = raw.get("done_event", False)
    if not isinstance(done, bool):
        raise _invalid(f"stream.done_event must be true or false, got {json.dumps(done)}.")
    keepalive = _seconds(raw, "keepalive_s", StreamConfig.keepalive_s, zero_ok=True, where="stream")
    return StreamConfig(done_event=done, keepalive_s=keepalive)


def _parse_command(raw: Any, config: dict[str, Any]) -> tuple[str, ...]:
    if raw is None:
        hint = (
            " Container images (swr_location) are not supported; run the server as a command."
            if ("swr_location" in config)
            else ""
        )
        raise _invalid(
            "model_type Image needs field 'cmd', the command that starts your server, e.g. "
            '"cmd": "python3 server.py" (run in model/, must listen on $PORT).' + hint
        )
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            raise _invalid(f"field 'cmd' cannot be split into words ({exc}); check its quotes.") from exc
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        argv = list(raw)
    else:
        raise _invalid("field 'cmd' must be a string or a list of strings.")
    if not argv or not argv[0]:
        raise _invalid("field 'cmd' is empty; give the command that starts your server.")
    return tuple(argv)


def _parse_port(raw: Any) -> int:
    port = _integer(raw, "port")
    if not 1 <= port <= 65535:
        raise _invalid(f"field 'port' must be 1-65535, got {json.dumps(raw)}.")
    return port


def _parse_health(raw: Any, defaults: HealthConfig) -> HealthConfig:
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise _invalid('field \'health\' must be an object like {"url": "/health", "period_seconds": "5"}.')
    method = raw.get("check_method", defaults.check_method)
    if not isinstance(method, str) or method.upper() not in ("HTTP", "EXEC"):
        raise _invalid(f'health.check_method must be "HTTP" or "EXEC", got {json.dumps(method)}.')
    method = method.upper()
    url = raw.get("url", defaults.url)
    if not isinstance(url, str) or not url.startswith("/"):
        raise _invalid(f"health.url must be a path starting with '/', got {json.dumps(url)}.")
    command = None
    if method == "EXEC":
        cmd = raw.get("command")
        if isinstance(cmd, str):
            command = tuple(shlex.split(cmd))
        elif isinstance(cmd, list) and all(isinstance(a, str) for a in cmd):
            command = tuple(cmd)
        if not command:
            raise _invalid('health.check_method EXEC needs health.command, e.g. "command": "cat /tmp/ready".')
    return HealthConfig(
        check_method=method,
        url=url,
        command=command,
        initial_delay_seconds=_seconds(raw, "initial_delay_seconds", defaults.initial_delay_seconds, zero_ok=True),
        timeout_seconds=_seconds(raw, "timeout_seconds", defaults.timeout_seconds, zero_ok=False),
        period_seconds=_seconds(raw, "period_seconds", defaults.period_seconds, zero_ok=False),
        failure_threshold=_threshold(raw, defaults.failure_threshold),
    )


def _seconds(raw: dict[str, Any], name: str, default: float, *, zero_ok: bool, where: str = "health") -> float:
    value = raw.get(name)
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)
    except (TypeError, ValueError):
        raise _invalid(f"{where}.{name} must be a number of seconds, got {json.dumps(value)}.") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise _invalid(f"{where}.{name} must be {bound}, got {json.dumps(value)}.")
    return seconds


def _threshold(raw: dict[str, Any], default: int) -> int:
    value = raw.get("failure_threshold")
    if value is None:
        return default
    threshold = _integer(value, "health.failure_threshold")
    if threshold < 1:
        raise _invalid(f"health.failure_threshold must be >= 1, got {json.dumps(value)}.")
    return threshold


def _integer(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _invalid(f"field '{name}' must be a whole number (\"8\" or 8), got {json.dumps(value)}.")
