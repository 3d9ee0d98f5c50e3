"""Instance entry point: `python -m modelport.runtime DIR [--host H] [--port P]` runs one instance.

`DIR` is a model package (the directory holding `model/`). The address comes from `--host` /
`--port`, else `$HOST` / `$PORT` (the instance contract), else 127.0.0.1:8080. The process
works in `DIR/model`, whatever the runtime:

* `python` packages are served by `modelport.runtime.server`;
* `command` packages replace this process (exec) with their `cmd`, with `PORT`/`HOST` set and
  the package's `envs` added (the environment the instance was started with wins);
* `llm` packages are served by the built-in LLM engine (`modelport.llm`).

A package that fails validation exits 2 with the platform error on stderr. Only the standard
library, `modelport.packages` and `modelport.errors` are imported before the runtime is
chosen, so an instance starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from modelport.errors import PlatformError
from modelport.packages import DEFAULT_PORT, ModelPackage, load_package

EXIT_BAD_PACKAGE = 2
EXIT_NO_COMMAND = 127


def run_instance(root: Path, host: str | None, port: int | None) -> None:
    """Run one instance of the package at `root` in this process; returns only when it exits.

    Exits the process (SystemExit) with the instance's code: 0 after SIGTERM, 1 after a failed
    model load, 2 for a bad or unsupported package, 127 when a command cannot be started.
    """
    host = host or os.environ.get("HOST") or "127.0.0.1"
    port = port or _port_from_env()
    try:
        package = load_package(Path(root).resolve())
    except PlatformError as exc:
        _die(EXIT_BAD_PACKAGE, f"{exc.code}: {exc.message}")
    os.chdir(package.model_dir)
    if package.runtime_kind == "command":
        _exec_command(package, host, port)
    if package.runtime_kind == "llm":
        from modelport.llm.__main__ import run as run_llm

        raise SystemExit(run_llm(package.root, host, port))
    from modelport.runtime.server import serve

    for name, value in package.instance_env().items():
        os.environ.setdefault(name, value)
    raise SystemExit(serve(package, host, port))


def _port_from_env() -> int:
    raw = os.environ.get("PORT")
    if not raw:
        return DEFAULT_PORT
    try:
        return int(raw)
    except ValueError:
        _die(EXIT_BAD_PACKAGE, f"PORT={raw!r} is not a port number.")


def _exec_command(package: ModelPackage, host: str, port: int) -> None:
    env = {**package.instance_env(), **os.environ, "PORT": str(port), "HOST": host}
    argv = package.instance_argv()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        _die(
            EXIT_NO_COMMAND,
            f"cannot start cmd {argv!r} in {package.model_dir}: {exc}. Check 'cmd' in config.json.",
        )


def _die(code: int, message: str) -> NoReturn:
    print(f"modelport runtime: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelport.runtime", description="Run one model instance.")
    parser.add_argument("package", type=Path, help="the package directory (the one holding model/)")
    parser.add_argument("--host", help="address to listen on (default $HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default $PORT, else 8080)")
    args = parser.parse_args(argv)
    run_instance(args.package, args.host, args.port)


if __name__ == "__main__":
    main()
