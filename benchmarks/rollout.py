"""Rolling upgrade of 4 instances under load: failures and p99 latency before, during and after.

    .venv/bin/python benchmarks/rollout.py [--clients 8] [--phase-seconds 5]

A closed loop of async clients (aiohttp, keep-alive) calls an echo service of 4 instances through
the gateway; midway the service is rolled to a new model version (max_surge 1, max_unavailable 0).
Goal: 0 failures out of >= 10,000 requests, p99 during the upgrade <= 2x p99 before.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

import aiohttp
from _platform import EXAMPLES, Platform
from rich.console import Console
from rich.table import Table


@dataclass
class Sample:
    t: float
    latency: float
    ok: bool


async def _client(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[Sample]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with session.post(url, json={"x": 1}) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        out.append(Sample(t0, time.perf_counter() - t0, ok))


def _p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98] * 1000 if len(xs) > 100 else float("nan")


async def run(clients: int, phase_s: float) -> None:
    with Platform() as p:
        c = p.client()
        ids = {v: c.import_model("echo", v, "Custom", EXAMPLES / "echo") for v in ("1.0.0", "2.0.0")}
        for mid in ids.values():
            c.wait_model(mid)
        cfg = {"weight": 100, "specification": "modelarts.vm.cpu.1u", "instance_count": 4}
        sid = c.create_service(
            {
                "service_name": "roll",
                "infer_type": "real-time",
                "config": [{"model_id": ids["1.0.0"], **cfg}],
                # The benchmark measures the roll, not the default QPS limit (100/s).
                "additional_properties": {"qps_limit": 100_000},
            }
        )
        assert c.wait_service(sid, timeout=120)["status"] == "running"
        url = f"{p.url}/v1/infers/{sid}"
        samples: list[Sample] = []
        stop = asyncio.Event()
        conn = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=conn, headers={"X-Auth-Token": c.token()}) as session:
            tasks = [asyncio.create_task(_client(session, url, stop, samples)) for _ in range(clients)]
            await asyncio.sleep(phase_s)
            t_roll = time.perf_counter()
            await asyncio.to_thread(c.update_service, sid, {"config": [{"model_id": ids["2.0.0"], **cfg}]})

            def settled() -> bool:
                svc = c.get_service(sid)
                insts = [i for i in svc["config"][0]["instances"] if i["status"] != "stopped"]
                return (
                    svc["status"] == "running" and len(insts) == 4 and all(i["model_id"] == ids["2.0.0"] for i in insts)
                )

            while not await asyncio.to_thread(settled):
                await asyncio.sleep(0.5)
            t_done = time.perf_counter()
            await asyncio.sleep(phase_s)
            stop.set()
            await asyncio.gather(*tasks)
        phases = {
            "before": [s for s in samples if s.t < t_roll],
            "during": [s for s in samples if t_roll <= s.t < t_done],
            "after": [s for s in samples if s.t >= t_done],
        }
        table = Table(title=f"Rolling upgrade of 4 instances under {clients} closed-loop clients")
        for col in ("phase", "requests", "failures", "req/s", "p50 ms", "p99 ms"):
            table.add_column(col, justify="right")
        for name, xs in phases.items():
            lat = [s.latency for s in xs]
            span = (max(s.t for s in xs) - min(s.t for s in xs)) if len(xs) > 1 else 1
            table.add_row(name, str(len(xs)), str(sum(not s.ok for s in xs)), f"{len(xs) / span:.0f}",
                          f"{statistics.median(lat) * 1000:.2f}", f"{_p99(lat):.2f}")  # fmt: skip
        console = Console()
        console.print(table)
        total_fail = sum(not s.ok for s in samples)
        ratio = _p99([s.latency for s in phases["during"]]) / _p99([s.latency for s in phases["before"]])
        console.print(
            f"upgrade wall time {t_done - t_roll:.2f} s; {len(samples)} requests, {total_fail} failures; "
            f"p99 during / before = {ratio:.2f} (goal <= 2)"
        )
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--phase-seconds", type=float, default=5.0)
    args = ap.parse_args()
    asyncio.run(run(args.clients, args.phase_seconds))


if __name__ == "__main__":
    main()
