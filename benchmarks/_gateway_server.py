"""Benchmark helper: serve a Gateway in front of fixed instances, exactly as the platform serves it.

Run: `python benchmarks/_gateway_server.py --upstream 127.0.0.1:PORT [--upstream ...] [--port 0]
[--policy PREFIX_AFFINITY]`. Prints one line `READY <port> <service_id> <token>` once listening, then
serves until SIGINT/SIGTERM. The route table has one running service (id `bench`, WebSocket enabled)
with one version over the given instances, routed by `--policy` (default LEAST_CONNECTIONS); the
token is freshly issued by a TokenService with a random key, scoped to the service's project.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from types import MappingProxyType

import uvicorn

from modelport.auth.tokens import TokenService
from modelport.gateway.app import Gateway
from modelport.gateway.routes import Endpoint, RouteTable, ServiceRoute, VersionRoute
from modelport.gateway.websocket import GatewayWebSocketProtocol

SERVICE_ID = "bench"
PROJECT_ID = "bench-project"


def build(upstreams: list[str], policy: str = "LEAST_CONNECTIONS") -> tuple[Gateway, str]:
    tokens = TokenService(os.urandom(32))
    token, _ = tokens.issue("bench-user", "bench", PROJECT_ID)
    endpoints = []
    for i, address in enumerate(upstreams):
        host, _, port = address.rpartition(":")
        endpoints.append(Endpoint(f"inst-{i}", host, int(port)))
    version = VersionRoute("cfg-1", "model-1", "echo", "1.0.0", 100, tuple(endpoints))
    route = ServiceRoute(SERVICE_ID, PROJECT_ID, "running", (version,), policy=policy, websocket=True)
    gateway = Gateway(tokens)
    gateway.set_routes(RouteTable(1, MappingProxyType({SERVICE_ID: route})))
    return gateway, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", action="append", required=True, help="HOST:PORT of an instance")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--policy", default="LEAST_CONNECTIONS", help="instance choice, e.g. PREFIX_AFFINITY")
    args = parser.parse_args()
    gateway, token = build(args.upstream, args.policy)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)  # connections made before uvicorn runs wait in the backlog
    config = uvicorn.Config(
        gateway,
        http="httptools",
        ws=GatewayWebSocketProtocol,
        loop="uvloop",
        access_log=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    print(f"READY {sock.getsockname()[1]} {SERVICE_ID} {token}", flush=True)
    server.run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
