"""Benchmark (c) of issue 4: prefix-aware routing vs least-outstanding over 4 LLM instances behind the gateway.

    .venv/bin/python benchmarks/llm_routing.py [--systems 8 --users 4 --turns 3 --concurrency 4]

A multi-tenant chat trace: `--systems` system prompts (`--system-len` words each), `--users` chats
per system prompt, `--turns` turns per chat (`--user-len` words per user message, the model's
reply appended to the history before the next turn), `--concurrency` chats in flight at once.
It runs three times, each with fresh prompts (so no run profits from another's cache):

- through the gateway with policy PREFIX_AFFINITY over 4 instances,
- through the gateway with policy LEAST_CONNECTIONS over the same 4 instances,
- straight to one "big" instance with 4x the KV cache (the hit rate to match).

Each instance is `python -m modelport.llm` on a small random Llama built on the fly
(`modelport.llm.testing`, ~26M parameters: 512 wide, 6 layers, word-level tokenizer of 8,000 words,
so one word = one token) with one torch thread and `--kv-blocks` KV blocks of 16 tokens (room for
four of the eight system prompts: least-outstanding, which shows every instance every prompt,
evicts; prefix-aware does not need to); the gateway is `benchmarks/_gateway_server.py` (served as in production). Every
request streams; TTFT is measured at the client (request sent -> first generated chunk), the hit
rate is prompt tokens served from the prefix cache (`usage.prompt_tokens_details.cached_tokens`)
over prompt tokens. Goals: prefix-aware hit rate within 5 points of the big instance, and mean TTFT
at least 2x lower than least-outstanding. Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT / "src"))

MODEL = {
    "hidden_size": 512,
    "num_layers": 6,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 1408,
    "max_position_embeddings": 4096,
    "tokenizer": "wordlevel",
    "vocab_size": 8000,
}


@dataclass
class Result:
    ttft: float
    prompt_tokens: int
    cached_tokens: int
    instance: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_instances(checkpoint: Path, n: int, threads: int, kv_blocks: int) -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    env = {
        **os.environ,
        "MODELPORT_LLM_THREADS": str(threads),
        "MODELPORT_LLM_NUM_KV_BLOCKS": str(kv_blocks),
        "MODELPORT_LLM_MAX_NUM_SEQS": "16",
        "MODELPORT_LLM_MAX_MODEL_LEN": "4096",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for _ in range(n):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "modelport.llm", str(checkpoint), "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports.append(port)
    deadline = time.monotonic() + 180
    for proc, port in zip(procs, ports, strict=True):
        while True:
            if proc.poll() is not None:
                stop(procs)
                raise RuntimeError(f"instance exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stop(procs)
                raise RuntimeError("instances not ready")
            time.sleep(0.2)
    return procs, ports


def start_gateway(ports: list[int], policy: str) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, str(BENCH / "_gateway_server.py"), "--policy", policy]
    for port in ports:
        cmd += ["--upstream", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()  # type: ignore[union-attr]
    if not line or line[0] != "READY":
        raise RuntimeError(f"gateway did not start: {line}")
    _, port, service_id, token = line
    return proc, f"http://127.0.0.1:{port}/v1/infers/{service_id}", token


class Trace:
    """The chats of one run: fresh words for every run (seeded), the same shape."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.args = args
        self.rng = random.Random(seed)
        self.systems = [self.words(args.system_len) for _ in range(args.systems)]

    def words(self, n: int) -> str:
        return " ".join(f"w{self.rng.randrange(MODEL['vocab_size'] - 20)}" for _ in range(n))  # type: ignore[operator]

    def chats(self) -> list[list[str]]:
        """Per chat: its system prompt, then its user messages; chats in a random order."""
        a = self.args
        out = [
            [system, *(self.words(a.user_len) for _ in range(a.turns))]
            for system in self.systems
            for _ in range(a.users)
        ]
        self.rng.shuffle(out)
        return out


async def chat_turn(client: httpx.AsyncClient, url: str, body: dict) -> tuple[Result, str]:
    sent = time.perf_counter()
    ttft = None
    text = []
    usage = {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        instance = r.headers.get("x-modelport-instance", "direct")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", ()):
                delta = choice.get("delta", {})
                if "role" in delta:
                    continue  # sent before any work
                if ttft is None:
                    ttft = time.perf_counter() - sent
                text.append(delta.get("content") or "")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return Result(ttft or 0.0, usage["prompt_tokens"], cached, instance), "".join(text)


async def run_trace(url: str, headers: dict[str, str], model: str, trace: Trace, concurrency: int) -> list[Result]:
    results: list[Result] = []
    limit = asyncio.Semaphore(concurrency)

    async def chat(client: httpx.AsyncClient, turns: list[str]) -> None:
        async with limit:
            messages = [{"role": "system", "content": turns[0]}]
            for user in turns[1:]:
                messages.append({"role": "user", "content": user})
                body = {
                    "model": model,
                    "messages": messages,
                    "max_tokens": trace.args.max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                result, reply = await chat_turn(client, url, body)
                results.append(result)
                messages.append({"role": "assistant", "content": reply})

    async with httpx.AsyncClient(headers=headers, timeout=300) as client:
        await asyncio.gather(*(chat(client, c) for c in trace.chats()))
    return results


def engine_hits(ports: list[int]) -> tuple[int, int]:
    hit = queried = 0
    for port in ports:
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/engine/stats", timeout=10).json()
        hit += stats["prefix_cache_hit_tokens"]
        queried += stats["prefix_cache_queried_tokens"]
    return hit, queried


def summary(name: str, results: list[Result], engine: tuple[int, int]) -> dict[str, object]:
    prompt = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    ttfts = sorted(r.ttft for r in results)
    spread: dict[str, int] = {}
    for r in results:
        spread[r.instance] = spread.get(r.instance, 0) + 1
    return {
        "name": name,
        "requests": len(results),
        "hit_rate": cached / prompt,
        "engine_hit_rate": engine[0] / engine[1] if engine[1] else 0.0,
        "mean_ttft": statistics.fmean(ttfts),
        "p50_ttft": ttfts[len(ttfts) // 2],
        "p90_ttft": ttfts[int(len(ttfts) * 0.9)],
        "spread": "/".join(str(v) for _, v in sorted(spread.items())),
    }


def run_policy(url: str, token: str, ports: list[int], trace: Trace, name: str, args: argparse.Namespace) -> dict:
    before = engine_hits(ports)
    results = asyncio.run(run_trace(url, {"X-Auth-Token": token}, args.model_name, trace, args.concurrency))
    after = engine_hits(ports)
    return summary(name, results, (after[0] - before[0], after[1] - before[1]))


def warm(ports: list[int], model: str) -> None:
    for port in ports:
        body = {"model": model, "messages": [{"role": "user", "content": "w1 w2 w3"}], "max_tokens": 2}
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60).raise_for_status()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", type=int, default=8)
    ap.add_argument("--users", type=int, default=4, help="chats per system prompt")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--system-len", type=int, default=1000, help="words (= tokens) per system prompt")
    ap.add_argument("--user-len", type=int, default=40, help="words per user message")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per reply")
    ap.add_argument("--concurrency", type=int, default=4, help="chats in flight at once")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--kv-blocks", type=int, default=256, help="KV blocks (16 tokens) per instance")
    ap.add_argument("--hidden", type=int, default=MODEL["hidden_size"], help="model width")
    ap.add_argument("--layers", type=int, default=MODEL["num_layers"], help="model depth")
    ap.add_argument("--skip-single", action="store_true", help="skip the single big instance run")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    MODEL.update(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.hidden * 11 // 4)
    started = time.monotonic()
    from modelport.llm.testing import build_checkpoint

    table: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "chat-llama", **MODEL)  # type: ignore[arg-type]
        args.model_name = checkpoint.name
        procs: list[subprocess.Popen] = []
        try:
            procs, ports = start_instances(checkpoint, args.instances, 1, args.kv_blocks)
            warm(ports, args.model_name)
            for seed, policy in ((1, "PREFIX_AFFINITY"), (2, "LEAST_CONNECTIONS")):
                gateway, url, token = start_gateway(ports, policy)
                procs.append(gateway)
                name = "prefix-aware" if policy == "PREFIX_AFFINITY" else "least-outstanding"
                table.append(
                    run_policy(url, token, ports, Trace(args, seed), f"{name}, {args.instances} instances", args)
                )
                stop([gateway])
            stop(procs)
            if not args.skip_single:
                procs, ports = start_instances(checkpoint, 1, 2, args.kv_blocks * args.instances)
                warm(ports, args.model_name)
                url = f"http://127.0.0.1:{ports[0]}"
                table.append(run_policy(url, "", ports, Trace(args, 3), "one big instance (4x KV)", args))
        finally:
            stop(procs)
    a = args
    print(
        f"\ntrace: {a.systems} system prompts x {a.users} chats x {a.turns} turns = "
        f"{a.systems * a.users * a.turns} requests, {a.concurrency} chats in flight; system prompt {a.system_len} "
        f"tokens, user turns {a.user_len}, replies {a.max_tokens}; model: random Llama "
        f"hidden {MODEL['hidden_size']} x {MODEL['num_layers']} layers, 1 torch thread per instance, "
        f"{a.kv_blocks} KV blocks of 16 tokens per instance\n"
    )
    print(
        "| routing | hit rate (usage) | hit rate (engine) | mean TTFT | p50 TTFT | p90 TTFT | requests per instance |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(
            f"| {row['name']} | {row['hit_rate']:.1%} | {row['engine_hit_rate']:.1%} | "
            f"{row['mean_ttft'] * 1000:.0f} ms | {row['p50_ttft'] * 1000:.0f} ms | {row['p90_ttft'] * 1000:.0f} ms | "
            f"{row['spread']} |"
        )
    prefix_row, least_row = table[0], table[1]
    ratio = least_row["mean_ttft"] / prefix_row["mean_ttft"]
    print(f"\nmean TTFT, least-outstanding / prefix-aware: {ratio:.1f}x (goal >= 2x)")
    if len(table) > 2:
        gap = (table[2]["hit_rate"] - prefix_row["hit_rate"]) * 100
        print(f"hit rate, one big instance - prefix-aware: {gap:+.1f} points (goal <= 5)")
    print(f"(whole benchmark: {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
