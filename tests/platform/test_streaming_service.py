"""examples/streaming deployed on the real platform: SSE arrives spaced through the gateway, and the
WebSocket chat round-trips through it, with auth required on the upgrade."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import websockets
from tests.conftest import EXAMPLES, make_platform
from websockets.asyncio.client import connect

pytestmark = pytest.mark.slow


def test_streaming_example_through_the_platform(tmp_path: Path) -> None:
    p = make_platform(tmp_path)
    p.start()
    c = p.client()
    try:
        mid = c.import_model("streaming", "1.0.0", "Custom", EXAMPLES / "streaming")
        assert c.wait_model(mid)["model_status"] == "published"
        sid = c.create_service(
            {
                "service_name": "stream-chat",
                "infer_type": "real-time",
                "config": [
                    {"model_id": mid, "weight": 100, "specification": "modelarts.vm.cpu.1u", "instance_count": 1}
                ],
                "additional_properties": {"websocket_upgrade": True},
            }
        )
        svc = c.wait_service(sid, timeout=120)
        assert svc["status"] == "running", svc
        p.instance_pids()
        token = c.token()
        _check_sse(f"{p.url}/v1/infers/{sid}/", token)
        asyncio.run(_check_websocket(f"ws://127.0.0.1:{p.port}/v1/infers/{sid}/chat", token))
    finally:
        c.close()
        p.stop()


def _check_sse(url: str, token: str) -> None:
    arrivals: list[tuple[float, bytes]] = []
    buffer = b""
    body = {"prompt": "hello stream", "max_tokens": 20, "interval": 0.05}
    with httpx.stream("POST", url, json=body, headers={"X-Auth-Token": token}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                arrivals.append((time.monotonic(), event))
    events = [e for _, e in arrivals]
    assert events[-1] == b"data: [DONE]"
    tokens = [json.loads(e[6:]) for e in events[:-1]]
    assert [t["index"] for t in tokens] == list(range(20)) and tokens[0]["token"] == "hello"
    # One by one as the handler yields them, not in one lump (a busy machine may now and then hold
    # this client back long enough to read two at once).
    gaps = sorted(t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(arrivals[:-1]))
    assert gaps[3] > 0.02 and gaps[len(gaps) // 2] > 0.035, gaps
    assert arrivals[19][0] - arrivals[0][0] > 0.019 * 50
    # Without a credential: refused by the gateway with a platform error.
    r = httpx.post(url, json=body, timeout=10)
    assert r.status_code == 401 and r.json()["error_code"] == "ModelArts.0201"


async def _check_websocket(url: str, token: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401
    async with connect(url, additional_headers={"X-Auth-Token": token}, max_size=4 * 1024 * 1024) as ws:
        await ws.send("echo me")
        assert await ws.recv() == "echo me"
        blob = os.urandom(1024 * 1024)
        await ws.send(blob)
        assert await ws.recv() == blob
        await ws.send(json.dumps({"prompt": "hi there", "max_tokens": 3, "interval": 0.01}))
        replies = [json.loads(await ws.recv()) for _ in range(4)]
        assert [r.get("token") for r in replies[:3]] == ["hi", "there", "the"] and replies[3] == {"done": True}
        await ws.close(1000, "done")
    assert ws.close_code == 1000
