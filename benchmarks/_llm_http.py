"""Helper of benchmarks/llm.py: output tokens/s of concurrent streaming requests through a real instance.

Starts `python -m modelport.llm CHECKPOINT` on a free port, sends the prompts (as token ids) as
concurrent streaming /v1/completions, and counts the completion tokens the usage chunks report.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _stream_one(client: httpx.AsyncClient, model: str, prompt: list[int], output_len: int) -> int:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return tokens


async def _run(url: str, model: str, prompts: list[list[int]], output_len: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(_stream_one(client, model, p, output_len) for p in prompts))
        return sum(counts) / (time.perf_counter() - started)


def http_throughput(checkpoint: Path, dtype: str, threads: int, prompts: list[list[int]], output_len: int) -> float:
    port = _free_port()
    env = {
        **os.environ,
        "MODELPORT_LLM_DTYPE": dtype,
        "MODELPORT_LLM_THREADS": str(threads),
        "MODELPORT_LLM_KV_CACHE_MB": "256",
        "MODELPORT_LLM_MAX_NUM_SEQS": str(max(len(prompts), 8)),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport.llm", str(checkpoint), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"instance exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("instance not ready")
            time.sleep(0.2)
        asyncio.run(_run(url, checkpoint.name, prompts[:2], 4))  # warm the HTTP path
        return asyncio.run(_run(url, checkpoint.name, prompts, output_len))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
