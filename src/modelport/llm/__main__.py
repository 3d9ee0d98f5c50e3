"""Instance entry point: `python -m modelport.llm DIR [--host H] [--port P]` serves one LLM instance.

`DIR` is an LLM model package (the directory holding `model/`, see `modelport.llm.config` for the
layout) or a bare Hugging Face checkpoint directory. The address comes from `--host` / `--port`,
else `$HOST` / `$PORT` (the instance contract), else 127.0.0.1:8080. Exit codes: 0 after
SIGTERM, 1 when the model failed to load, 2 for a bad package or configuration.
`OMP_WAIT_POLICY` defaults to PASSIVE (see `run`); torch threads come from `MODELPORT_LLM_THREADS`
(default: one per core the process may use).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_BAD_PACKAGE = 2


def run(target: Path, host: str | None = None, port: int | None = None) -> int:
    """Serve the package or checkpoint at `target`; returns the exit code."""
    # Before torch loads OpenMP: idle threads sleep instead of spinning. Spinning threads collapse
    # throughput (10x measured) when the cores are shared with other processes, as on one node
    # running the gateway and several instances; when the cores are idle passive is as fast.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from modelport.llm.config import ConfigError, resolve_engine_config

    host = host or os.environ.get("HOST") or "127.0.0.1"
    try:
        port = port or int(os.environ.get("PORT") or 8080)
    except ValueError:
        print(f"modelport llm: PORT={os.environ['PORT']!r} is not a port number", file=sys.stderr)
        return EXIT_BAD_PACKAGE
    try:
        config = resolve_engine_config(target)
    except ConfigError as exc:
        print(f"modelport llm: {exc}", file=sys.stderr)
        return EXIT_BAD_PACKAGE
    from modelport.llm.server import serve

    return serve(config, host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelport.llm", description="Serve one LLM instance.")
    parser.add_argument("target", type=Path, help="an LLM package directory (holding model/) or a checkpoint")
    parser.add_argument("--host", help="address to listen on (default $HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default $PORT, else 8080)")
    args = parser.parse_args(argv)
    raise SystemExit(run(args.target, args.host, args.port))


if __name__ == "__main__":
    main()
