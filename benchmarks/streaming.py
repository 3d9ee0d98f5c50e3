"""Benchmark: what the gateway adds to Server-Sent Event streams, against calling the instance directly.

Run: `.venv/bin/python benchmarks/streaming.py [--requests 300] [--streams 1000]`.

Starts, each in its own process: the python runtime serving a streaming handler (an async
generator, written to a temporary package) and the gateway in front of it
(`benchmarks/_gateway_server.py`, served as in production). This process is the client, on raw
keep-alive HTTP/1.1 connections, so that no client library sits between the socket and the clock.

1. time to first event: a request whose handler yields its first event at once, sent direct and
   through the gateway in alternation; median, p90, p99 (goal: through the gateway <= direct + 5 ms);
2. inter-event jitter: streams of 50 events 20 ms apart; how far each arrival gap is from 20 ms
   (mean, p99), direct and through the gateway;
3. memory of N idle streams: N concurrent streams through the gateway that send one event and
   then stay silent; the gateway's resident memory before and with all of them open
   (goal: <= ~50 MB more for 1,000). The fd limit is raised to what N needs.
Every process started is stopped at the end; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
from gateway_overhead import free_port, stop  # noqa: E402  (benchmark helpers)

HANDLER = """
import asyncio

from modelport import BaseService


class Events(BaseService):
    def _inference(self, data):
        return self._events(int(data.get("n", 1)), float(data.get("gap", 0)), float(data.get("hold", 0)))

    async def _events(self, n, gap, hold):
        for i in range(n):
            if i:
                await asyncio.sleep(gap)
            yield {"i": i}
        if hold:
            await asyncio.sleep(hold)
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_instance(package: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MODELPORT_GRACE_S": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport.runtime", str(package)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("instance did not become healthy")


def start_gateway(upstream_port: int) -> tuple[subprocess.Popen, int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_gateway_server.py"), "--upstream", f"127.0.0.1:{upstream_port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()  # type: ignore[union-attr]
    if not line or line[0] != "READY":
        raise RuntimeError(f"gateway did not start: {line}")
    return proc, int(line[1]), line[3]


class SSEClient:
    """One keep-alive HTTP/1.1 connection sending SSE requests and timing each event's arrival."""

    def __init__(self, port: int, path: str, token: str | None) -> None:
        self.port = port
        self.path = path
        self.auth = f"x-auth-token: {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> SSEClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def send(self, body: dict[str, float]) -> float:
        raw = json.dumps(body).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\n{self.auth}content-length: {len(raw)}\r\n\r\n"
        ).encode()
        sent = time.perf_counter()
        self.writer.write(head + raw)  # type: ignore[union-attr]
        return sent

    async def events(self, want: int | None = None) -> list[float]:
        """Arrival times of the events of the response (`want` of them, or until it ends)."""
        reader = self.reader
        assert reader is not None
        buffer = b""
        times: list[float] = []
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("connection closed")
            now = time.perf_counter()
            if not buffer and not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(data[:200].decode(errors="replace"))
            buffer += data
            found = buffer.count(b"\n\n") - len(times)
            times += [now] * found
            if want is not None and len(times) >= want:
                return times
            if buffer.endswith(b"\r\n0\r\n\r\n"):
                return times


async def time_to_first_event(port: int, gw_port: int, token: str, requests: int) -> dict[str, list[float]]:
    direct = await SSEClient(port, "/", None).connect()
    gateway = await SSEClient(gw_port, "/v1/infers/bench/", token).connect()
    results: dict[str, list[float]] = {"direct": [], "gateway": []}
    try:
        for i in range(requests + 20):
            for name, client in (
                (("direct", direct), ("gateway", gateway))
                if i % 2
                else (
                    ("gateway", gateway),
                    ("direct", direct),
                )
            ):
                sent = client.send({"n": 1})
                times = await client.events()
                if i >= 20:  # warm-up done
                    results[name].append(times[0] - sent)
    finally:
        direct.close()
        gateway.close()
    return results


async def jitter(port: int, gw_port: int, token: str, streams: int, gap: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"direct": [], "gateway": []}
    for name, client in (
        ("direct", SSEClient(port, "/", None)),
        ("gateway", SSEClient(gw_port, "/v1/infers/bench/", token)),
    ):
        await client.connect()
        try:
            for _ in range(streams):
                client.send({"n": 50, "gap": gap})
                times = await client.events()
                results[name] += [abs((b - a) - gap) for a, b in itertools.pairwise(times)]
        finally:
            client.close()
    return results


async def idle_streams(gw_port: int, gw_pid: int, token: str, n: int) -> tuple[float, float, float]:
    """(RSS before, RSS with n idle streams open, seconds to open them) of the gateway process."""

    async def open_one(limit: asyncio.Semaphore) -> SSEClient:
        async with limit:
            client = await SSEClient(gw_port, "/v1/infers/bench/", token).connect()
            client.send({"n": 1, "hold": 600})
            await client.events(want=1)
            return client

    warm = [await open_one(asyncio.Semaphore(1)) for _ in range(20)]
    for client in warm:
        client.close()
    await asyncio.sleep(1.0)
    before = rss_mb(gw_pid)
    started = time.perf_counter()
    limit = asyncio.Semaphore(100)
    clients = await asyncio.gather(*(open_one(limit) for _ in range(n)))
    opened = time.perf_counter() - started
    await asyncio.sleep(1.0)
    during = rss_mb(gw_pid)
    for client in clients:
        client.close()
    return before, during, opened


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="time-to-first-event requests per target")
    parser.add_argument("--jitter-streams", type=int, default=10, help="streams of 50 events per target")
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=1000, help="idle streams held open at once")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * args.streams + 256  # this process; children inherit the limit (gateway: 2 per stream)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    instance = gateway = None
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as tmp:
        package = Path(tmp) / "pkg"
        (package / "model").mkdir(parents=True)
        (package / "model" / "config.json").write_text(json.dumps({"model_type": "Custom"}))
        (package / "model" / "customize_service.py").write_text(HANDLER)
        try:
            instance, port = start_instance(package)
            gateway, gw_port, token = start_gateway(port)
            ttfe = asyncio.run(time_to_first_event(port, gw_port, token, args.requests))
            jit = asyncio.run(jitter(port, gw_port, token, args.jitter_streams, args.gap_ms / 1000))
            before, during, opened = asyncio.run(idle_streams(gw_port, gateway.pid, token, args.streams))
        finally:
            stop(gateway)
            stop(instance)
    ms = 1000.0
    print("\nSSE through the gateway vs direct (python runtime, async generator handler; 127.0.0.1)\n")
    print("| measure | direct | gateway | added |")
    print("|---|---|---|---|")
    for label, q in (("median", 0.5), ("p90", 0.9), ("p99", 0.99)):
        d, g = pct(ttfe["direct"], q) * ms, pct(ttfe["gateway"], q) * ms
        print(f"| time to first event, {label} | {d:.2f} ms | {g:.2f} ms | {g - d:+.2f} ms |")
    for label, fn in (("mean", statistics.fmean), ("p99", lambda v: pct(v, 0.99))):
        d, g = fn(jit["direct"]) * ms, fn(jit["gateway"]) * ms
        print(f"| inter-event jitter ({args.gap_ms:g} ms gaps), {label} | {d:.2f} ms | {g:.2f} ms | {g - d:+.2f} ms |")
    extra = during - before
    print(
        f"| gateway RSS, {args.streams} idle streams | | {before:.1f} → {during:.1f} MB | "
        f"{extra:+.1f} MB ({extra * 1024 / args.streams:.1f} KB/stream) |"
    )
    added = (pct(ttfe["gateway"], 0.5) - pct(ttfe["direct"], 0.5)) * ms
    print(f"\nadded time to first event (median): {added:.2f} ms  (goal <= 5 ms)")
    print(f"extra gateway memory for {args.streams} idle streams: {extra:.1f} MB  (goal <= ~50 MB for 1,000)")
    print(f"({args.requests} requests per target; {args.streams} streams opened in {opened:.1f} s)")


if __name__ == "__main__":
    main()
