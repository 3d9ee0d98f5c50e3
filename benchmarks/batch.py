"""Batch throughput and memory: a 2-instance batch service vs. a plain async client on the same model.

    .venv/bin/python benchmarks/batch.py [--records 10000] [--small 2000] [--big 0] [--inflight 4] [--repeat 3]

1. Direct: a real-time echo service with 2 instances (same model, flavor and count as the batch
   service below); a plain aiohttp client calls the two instances directly, `--inflight` requests
   in flight per instance, sending the JSON requests the CSV rows map to (records / wall time);
   then the same loop over the raw keep-alive client the batch runner uses, to show the runner's
   own overhead apart from the HTTP client's.
2. Batch: a batch service (csv mode, echo model, 2 instances, `--inflight` per instance) over a CSV
   of `--records` rows; records / time from its first instance being ready until the job is
   finished, which includes the second instance's start, committing every record and writing the
   result file and the manifest (so the comparison is conservative).
   Each side runs `--repeat` times; medians are compared.
3. Memory: peak RSS (VmHWM) of the platform process after `--small`-row and `--records`-row jobs
   (and `--big` rows if given), each size in a fresh platform.

Goal: batch >= 85% of the direct client's records/s; platform memory flat in the number of rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _platform import EXAMPLES, Platform

SPEC = "modelarts.vm.cpu.1u"
RULE = {
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "index": 0},
                "x": {"type": "number", "index": 1},
                "tag": {"type": "string", "index": 2},
            },
        }
    },
}


def write_csv(path: Path, rows: int) -> list[bytes]:
    lines = [f"{i},{i / 2},row-{i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return [
        json.dumps({"data": {"id": i, "x": i / 2, "tag": f"row-{i}"}}, separators=(",", ":")).encode()
        for i in range(rows)
    ]


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def direct(endpoints: list[tuple[str, int]], bodies: list[bytes], inflight: int) -> float:
    """records/s of a closed loop: `inflight` workers per instance, each sending its share of bodies."""
    headers = {"content-type": "application/json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Warm-up: open the keep-alive connections first.
        await asyncio.gather(*(session.post(f"http://{h}:{p}/", data=b"{}", headers=headers) for h, p in endpoints))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, f"http://{h}:{p}/") for h, p in endpoints for _ in range(inflight)))
        return len(bodies) / (time.perf_counter() - t0)


async def direct_raw(endpoints: list[tuple[str, int]], bodies: list[bytes], inflight: int) -> float:
    """The same closed loop over the keep-alive client the batch runner itself uses (no aiohttp)."""
    from modelport.batch.calls import Deadlines, call, json_request
    from modelport.gateway.upstream import Pool

    pool, deadlines = Pool(), Deadlines(30)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker(host: str, port: int) -> None:
        while not queue.empty():
            head, body = json_request("/", queue.get_nowait())
            reply = await call(pool, host, port, head, body, deadlines)
            assert reply.status == 200, reply.status

    warm = json_request("/", b"{}")
    await asyncio.gather(*(call(pool, h, p, *warm, deadlines) for h, p in endpoints))  # open the connections
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(h, p) for h, p in endpoints for _ in range(inflight)))
    rate = len(bodies) / (time.perf_counter() - t0)
    deadlines.close()
    await pool.aclose()
    return rate


def run_direct(
    c: Any, model_id: str, bodies: list[bytes], inflight: int, repeat: int
) -> tuple[list[float], list[float]]:
    sid = c.create_service(
        {
            "service_name": "direct",
            "infer_type": "real-time",
            "config": [{"model_id": model_id, "weight": 100, "specification": SPEC, "instance_count": 2}],
        }
    )
    svc = c.wait_service(sid, timeout=120)
    assert svc["status"] == "running", svc
    endpoints = [("127.0.0.1", i["port"]) for i in svc["config"][0]["instances"]]
    rates = [asyncio.run(direct(endpoints, bodies, inflight)) for _ in range(repeat)]
    raw = [asyncio.run(direct_raw(endpoints, bodies, inflight)) for _ in range(repeat)]
    c.delete_service(sid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(s["service_id"] == sid for s in c.list_services()["services"]):
        time.sleep(0.2)
    return rates, raw


def run_batch(c: Any, model_id: str, src: Path, dest: Path, name: str) -> dict[str, Any]:
    """One batch job; records/s from the moment its first instance is ready until the job is finished
    (every record committed, the result file and the manifest written): a conservative measure, as
    it includes the second instance's start, the runner noticing instances, and writing outputs."""
    sid = c.create_service(
        {
            "service_name": name,
            "infer_type": "batch",
            "config": [
                {
                    "model_id": model_id,
                    "specification": SPEC,
                    "instance_count": 2,
                    "src_path": str(src),
                    "dest_path": str(dest),
                    "req_uri": "/",
                    "mapping_type": "csv",
                    "mapping_rule": RULE,
                }
            ],
        }
    )
    svc = c.wait_service(sid, ("finished", "failed"), timeout=600)
    assert svc["status"] == "finished", svc
    total = svc["batch_progress"]["total"]
    assert svc["batch_progress"]["succeeded"] == total, svc["batch_progress"]
    events = c.events(sid, order="asc")["events"]
    ready = [e["occur_time"] for e in events if e["event_info"].endswith("is ready.")]
    assert len(ready) == 2, ready
    return {"total": total, "rate": total / ((svc["finished_time"] - min(ready)) / 1000)}


def job_in_fresh_platform(rows: int, workdir: Path, inflight: int, repeat: int) -> dict[str, Any]:
    """`repeat` batch jobs of `rows` rows (and as many direct runs if `repeat`) in a fresh platform."""
    src = workdir / f"in-{rows}"
    src.mkdir(parents=True)
    bodies = write_csv(src / "rows.csv", rows)
    with Platform(MODELPORT_BATCH_INFLIGHT_PER_INSTANCE=str(inflight)) as p:
        c = p.client()
        model_id = c.import_model("echo", "1.0.0", "Custom", EXAMPLES / "echo")
        c.wait_model(model_id)
        out: dict[str, Any] = {"rows": rows, "direct": [], "raw": [], "batch": []}
        if repeat:
            out["direct"], out["raw"] = run_direct(c, model_id, bodies, inflight, repeat)
        for i in range(max(1, repeat)):
            dest = workdir / f"out-{rows}-{i}"
            run = run_batch(c, model_id, src, dest, f"batch-{rows}-{i}")
            out["batch"].append(run["rate"])
            manifest = next(dest.glob("infer-result-*.manifest"))
            assert sum(1 for _ in manifest.open()) == rows
        assert p.proc is not None
        out["hwm_mb"] = vm_hwm_mb(p.proc.pid)
        c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--big", type=int, default=0, help="also run this many rows (memory only)")
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side; the median is reported")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-batch-bench-"))
    main_run = job_in_fresh_platform(args.records, work, args.inflight, args.repeat)
    sizes = [job_in_fresh_platform(args.small, work, args.inflight, 0), main_run]
    if args.big:
        sizes.append(job_in_fresh_platform(args.big, work, args.inflight, 0))
    direct_rate, batch_rate = statistics.median(main_run["direct"]), statistics.median(main_run["batch"])
    print(f"records: {args.records}, 2 instances (echo, {SPEC}), {args.inflight} in flight per instance")
    raw_rate = statistics.median(main_run["raw"])
    print(f"direct async client : {direct_rate:8.0f} records/s  runs: {_rates(main_run['direct'])}  (aiohttp)")
    print(f"direct raw client   : {raw_rate:8.0f} records/s  runs: {_rates(main_run['raw'])}  (the runner's own)")
    print(f"batch service       : {batch_rate:8.0f} records/s  runs: {_rates(main_run['batch'])}")
    print("  (end to end: from its first instance ready to the job finished, result file and manifest written)")
    print(f"ratio batch/direct  : {batch_rate / direct_rate:8.1%}  (goal >= 85%)")
    print(f"ratio batch/raw     : {batch_rate / raw_rate:8.1%}  (the cost of reading, checkpointing and writing)")
    for run in sizes:
        print(f"platform peak RSS (VmHWM) after a {run['rows']:>7}-row job: {run['hwm_mb']:7.1f} MiB")


def _rates(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
