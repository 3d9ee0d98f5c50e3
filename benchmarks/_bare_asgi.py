"""Baseline for the runtime benchmark: the barest uvicorn + httptools ASGI app that echoes a JSON body.

Run: `python benchmarks/_bare_asgi.py PORT`, then load it and `python -m modelport.runtime
examples/echo` with the same wrk command (benchmarks/post_json.lua); the runtime's goal is at
least half of this app's requests per second.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps(json.loads(b"".join(chunks))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
