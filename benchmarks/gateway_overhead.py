"""Benchmark: what the gateway costs, compared with calling the instance directly.

Run: `.venv/bin/python benchmarks/gateway_overhead.py [--duration 5]`.

Starts, each in its own process: an echo instance of our python runtime
(`python -m modelport.runtime examples/echo`), the gateway in front of it
(`benchmarks/_gateway_server.py`, served like production: uvicorn, httptools, uvloop, no access
log) and the load generator (`wrk` with `benchmarks/post_json.lua`, else an aiohttp client).
Measures straight-to-instance and through-gateway at 1 and 32 connections and prints req/s,
p50, p99, the CPU time each process spent per request, and the two goals: gateway/direct req/s
at 32 connections (goal >= 0.5) and the p50 the gateway adds at 1 connection (goal <= 0.5 ms).
Every process started is stopped at the end.

Security columns (`--security`, default on): one more gateway (`benchmarks/_secure_gateway.py`)
in front of the same instance serves five otherwise identical services: `open` (no auth, no QPS
limit: the unauthenticated gateway), `token`, `aksk` (SDK-HMAC-SHA256 verified on every request),
`token+qps` and `aksk+qps` (a QPS bucket taken per request; `--redis URL` puts it in Redis). Each is
reported as a ratio of req/s to `open` in the same run; goal >= 0.90 at 32 connections.

Two CPU layouts (`--layout`, default both): `shared` lets the OS place the three processes;
`pinned` puts the instance and the load generator on CPU 0 and the gateway on CPU 1, as when
the gateway has a core of its own (on a 2-CPU machine, `shared` makes three busy processes
share two CPUs, so the gateway's work directly takes CPU from the instance and the load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
LUA = BENCH / "post_json.lua"
BODY = b'{"x": 1}'


@dataclass
class Result:
    target: str
    conns: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: dict[str, float]  # CPU time per request of each process (instance, gateway, load)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, headers: dict[str, str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=BODY, headers={"Content-Type": "application/json", **headers})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- load generators ---------------------------------------------------------------------------


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins a child process to `cpus` (None: leave it to the OS)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


Run = Callable[[str, int, float, dict[str, str], "set[int] | None"], tuple[float, float, float, int]]


def run_wrk(
    url: str, conns: int, duration: float, headers: dict[str, str], cpus: set[int] | None
) -> tuple[float, float, float, int]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency", "-s", str(LUA)]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*cmd, url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
        preexec_fn=pinned(cpus),
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return rps, p50, p99, errors


def run_aiohttp(
    url: str, conns: int, duration: float, headers: dict[str, str], cpus: set[int] | None
) -> tuple[float, float, float, int]:
    """Fallback load generator, in its own process (this script with --loadgen)."""
    cmd = [sys.executable, __file__, "--loadgen", url, str(conns), str(duration), json.dumps(headers)]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 60, check=True, preexec_fn=pinned(cpus)
    )
    data = json.loads(out.stdout)
    return data["rps"], data["p50"], data["p99"], data["errors"]


async def _loadgen(url: str, conns: int, duration: float, headers: dict[str, str]) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json", **headers}
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(conns)])
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50": latencies[n // 2] * 1000,
        "p99": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "errors": errors,
    }


# -- the benchmark -----------------------------------------------------------------------------


def start_instance(cpus: set[int] | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport.runtime", str(ROOT / "examples" / "echo")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(cpus),
    )
    return proc, f"127.0.0.1:{port}"


def start_gateway(upstream: str, cpus: set[int] | None) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_gateway_server.py"), "--upstream", upstream],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(cpus),
    )
    line = proc.stdout.readline().split()  # type: ignore[union-attr]
    if not line or line[0] != "READY":
        raise RuntimeError(f"gateway did not start: {line}")
    _, port, service_id, token = line
    return proc, f"http://127.0.0.1:{port}/v1/infers/{service_id}", token


def measure(duration: float, use_wrk: bool, layout: str, repeat: int) -> list[Result]:
    run: Run = run_wrk if use_wrk else run_aiohttp
    # pinned: instance + load generator on CPU 0, gateway on CPU 1
    near, far = ({0}, {1}) if layout == "pinned" else (None, None)
    instance = gateway = None
    try:
        instance, address = start_instance(near)
        direct = f"http://{address}/"
        wait_http(direct, {})
        gateway, via, token = start_gateway(address, far)
        auth = {"X-Auth-Token": token}
        wait_http(via, auth)
        results = []
        for conns in (1, 32):
            for target, url, headers in (("direct", direct, {}), ("gateway", via, auth)):
                run(url, conns, min(1.0, duration), headers, near)  # warm-up: pools, caches
                procs = {"instance": instance.pid, "gateway": gateway.pid}
                runs = []
                for _ in range(repeat):
                    before = {name: cpu_seconds(pid) for name, pid in procs.items()}
                    load_before = children_cpu_seconds()  # the load generator is a finished child
                    rps, p50, p99, errors = run(url, conns, duration, headers, near)
                    used = {name: cpu_seconds(pid) - before[name] for name, pid in procs.items()}
                    used["load"] = children_cpu_seconds() - load_before
                    total = rps * duration
                    cpu_us = {name: 1e6 * seconds / total for name, seconds in used.items()}
                    if target == "direct":
                        del cpu_us["gateway"]
                    runs.append(Result(target, conns, rps, p50, p99, errors, cpu_us))
                # Best of the runs: on a shared machine the others measure other people's load.
                results.append(max(runs, key=lambda r: r.rps))
        return results
    finally:
        stop(gateway)
        stop(instance)


SECURITY_VARIANTS = ("open", "token", "aksk", "token+qps", "aksk+qps")


def measure_security(duration: float, use_wrk: bool, layout: str, repeat: int, redis_url: str | None) -> list[Result]:
    """The same instance behind one gateway, per security variant (see the module docstring)."""
    run: Run = run_wrk if use_wrk else run_aiohttp
    near, far = ({0}, {1}) if layout == "pinned" else (None, None)
    instance = gateway = None
    try:
        instance, address = start_instance(near)
        wait_http(f"http://{address}/", {})
        cmd = [sys.executable, str(BENCH / "_secure_gateway.py"), "--upstream", address]
        if redis_url:
            cmd += ["--redis", redis_url]
        gateway = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(far))
        head, _, variants_json = gateway.stdout.readline().partition(" ")  # type: ignore[union-attr]
        if head != "READY":
            raise RuntimeError("secure gateway did not start")
        port, _, variants_json = variants_json.partition(" ")
        variants = json.loads(variants_json)
        results = []
        for conns in (1, 32):
            for name in SECURITY_VARIANTS:
                url = f"http://127.0.0.1:{port}{variants[name]['path']}"
                headers = variants[name]["headers"]
                wait_http(url, headers)
                run(url, conns, min(1.0, duration), headers, near)  # warm-up
                runs = []
                for _ in range(repeat):
                    before = cpu_seconds(gateway.pid)
                    rps, p50, p99, errors = run(url, conns, duration, headers, near)
                    used = cpu_seconds(gateway.pid) - before
                    runs.append(Result(name, conns, rps, p50, p99, errors, {"gateway": 1e6 * used / (rps * duration)}))
                results.append(max(runs, key=lambda r: r.rps))
        return results
    finally:
        stop(gateway)
        stop(instance)


def report_security(results: list[Result], title: str) -> dict[str, float]:
    by = {(r.target, r.conns): r for r in results}
    titles = ("variant", "conns", "req/s", "vs open", "p50 ms", "p99 ms", "errors", "gateway CPU µs/req")
    rows = [
        (
            r.target,
            str(r.conns),
            f"{r.rps:,.0f}",
            f"{r.rps / by['open', r.conns].rps:.2f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            str(r.errors),
            f"{r.cpu_us['gateway']:.0f}",
        )
        for r in results
    ]
    _print_table(title, titles, rows)
    worst = min(by[v, 32].rps / by["open", 32].rps for v in SECURITY_VARIANTS[1:])
    print(f"security cost at 32 conns: worst variant keeps {worst:.2f} of open req/s  (goal >= 0.90)")
    return {"security_worst_ratio_32": worst}


def _print_table(title: str, titles: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table whose first column is left-aligned, the numbers right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(titles):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def report(results: list[Result], title: str) -> dict[str, float]:
    by = {(r.target, r.conns): r for r in results}
    ratio = by["gateway", 32].rps / by["direct", 32].rps
    added = by["gateway", 1].p50_ms - by["direct", 1].p50_ms
    rows = [
        (
            r.target,
            str(r.conns),
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            str(r.errors),
            " ".join(f"{name} {us:.0f}" for name, us in r.cpu_us.items()),
        )
        for r in results
    ]
    titles = ("target", "conns", "req/s", "p50 ms", "p99 ms", "errors", "CPU µs/req")
    _print_table(title, titles, rows)
    print(f"gateway/direct req/s at 32 conns: {ratio:.2f}  (goal >= 0.50)")
    print(f"added p50 at 1 conn: {added:.3f} ms  (goal <= 0.500 ms)")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 1.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs: other work competed for the CPUs")
    return {"ratio_32": ratio, "added_p50_ms_1": added}


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway overhead vs. calling the instance directly")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--aiohttp", action="store_true", help="use the aiohttp load generator even if wrk exists")
    parser.add_argument("--layout", choices=["shared", "pinned", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best is shown")
    parser.add_argument("--security", choices=["on", "off", "only"], default="on", help="security columns")
    parser.add_argument("--redis", default=None, help="security columns: QPS buckets in this Redis")
    parser.add_argument("--loadgen", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        url, conns, duration, headers = args.loadgen
        print(json.dumps(asyncio.run(_loadgen(url, int(conns), float(duration), json.loads(headers)))))
        return
    use_wrk = shutil.which("wrk") is not None and not args.aiohttp
    layouts = ["shared", "pinned"] if args.layout == "both" else [args.layout]
    if (os.cpu_count() or 1) < 2 and "pinned" in layouts:
        layouts.remove("pinned")
    failed = False
    for layout in layouts:
        generator = "wrk" if use_wrk else "aiohttp client"
        if args.security != "only":
            results = measure(args.duration, use_wrk, layout, args.repeat)
            report(results, f"gateway overhead, {layout} CPUs ({generator}, {os.cpu_count()} CPUs)")
            failed = failed or any(r.errors for r in results)
        if args.security != "off":
            secured = measure_security(args.duration, use_wrk, layout, args.repeat, args.redis)
            qps = "Redis" if args.redis else "local"
            report_security(secured, f"cost of security, {layout} CPUs ({generator}, QPS buckets {qps})")
            failed = failed or any(r.errors for r in secured)
    if failed:
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
