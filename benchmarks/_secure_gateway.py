"""Benchmark helper: one Gateway process with the same instance behind services that differ only in security.

Run: `python benchmarks/_secure_gateway.py --upstream 127.0.0.1:PORT [--redis URL]`. Prints one line
`READY <port> <json>` once listening, then serves until SIGINT/SIGTERM. The JSON has, per variant,
the URL path and the headers a client must send:
- `open`: `additional_properties.auth = "none"`, no QPS limit (the unauthenticated gateway);
- `token`: a token, role checked from the auth snapshot;
- `aksk`: an SDK-HMAC-SHA256 signature made once (valid 15 min: the algorithm has no nonce, so wrk
  can resend it), verified in full on every request, body hash included;
- `token+qps`, `aksk+qps`: the same with a QPS limit high enough never to refuse (the bucket is
  still taken on every request; with `--redis`, through Redis' Lua script).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from types import MappingProxyType

import uvicorn

from modelport.auth import signing
from modelport.auth.secrets import SecretBox
from modelport.auth.snapshot import AuthRecords, open_records
from modelport.auth.tokens import TokenService
from modelport.gateway.app import Gateway
from modelport.gateway.ratelimit import make_limiter
from modelport.gateway.routes import Endpoint, RouteTable, ServiceRoute, VersionRoute

PROJECT = "bench-project"
USER = "bench-user"
BODY = b'{"x": 1}'  # what benchmarks/post_json.lua sends
NO_LIMIT = 10_000_000


def build(upstream: str, port: int, redis_url: str | None) -> tuple[Gateway, dict[str, dict]]:
    key = os.urandom(32)
    tokens = TokenService(key)
    box = SecretBox(key)
    access, secret = "MPBENCHAK0000000000", "bench-secret-key-0000000000000000000000"
    records = AuthRecords(
        access_keys=[[access, USER, box.seal(secret)]],
        roles=[[USER, PROJECT, "developer"]],
        users={USER: ["bench", False, 0.0]},
    )
    gateway = Gateway(tokens, limiter=make_limiter(redis_url, f"bench-{os.getpid()}:"))
    gateway.set_auth(open_records(records, box, 1))
    host, _, instance_port = upstream.rpartition(":")
    version = VersionRoute("cfg-1", "model-1", "echo", "1.0.0", 100, (Endpoint("inst-0", host, int(instance_port)),))
    services = {
        "open": ServiceRoute("open", PROJECT, "running", (version,), auth_required=False),
        "token": ServiceRoute("token", PROJECT, "running", (version,)),
        "aksk": ServiceRoute("aksk", PROJECT, "running", (version,)),
        "token+qps": ServiceRoute("token-qps", PROJECT, "running", (version,), qps_limit=NO_LIMIT),
        "aksk+qps": ServiceRoute("aksk-qps", PROJECT, "running", (version,), qps_limit=NO_LIMIT),
    }
    gateway.set_routes(RouteTable(1, MappingProxyType({r.service_id: r for r in services.values()})))
    token, _ = tokens.issue(USER, "bench", PROJECT)
    variants = {}
    for name, route in services.items():
        path = f"/v1/infers/{route.service_id}"
        headers: dict[str, str] = {}
        if name.startswith("token"):
            headers = {"X-Auth-Token": token}
        elif name.startswith("aksk"):
            signed = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"}
            headers = {**signed, **signing.sign(access, secret, "POST", path, "", signed, BODY)}
            del headers["Host"]  # the load generator sends the same Host itself
        variants[name] = {"path": path, "headers": headers}
    return gateway, variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of an instance")
    parser.add_argument("--redis", default=None, help="share the QPS buckets through this Redis")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    gateway, variants = build(args.upstream, port, args.redis)
    config = uvicorn.Config(gateway, http="httptools", loop="uvloop", access_log=False, log_level="warning")
    print(f"READY {port} {json.dumps(variants)}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
