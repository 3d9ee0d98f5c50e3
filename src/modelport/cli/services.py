"""`modelport service deploy|list|show|update|start|stop|delete|events` and `modelport predict`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from modelport.cli.output import api_errors, client, console, fail, print_json, styled, table, when
from modelport.client import Client

app = typer.Typer(help="Deploy and manage real-time and batch services.", no_args_is_help=True)

DONE = ("running", "failed", "concerning", "stopped")


def _resolve_model(c: Client, ref: str) -> str:
    """A model id, or NAME:VERSION."""
    if ":" not in ref:
        return ref
    name, version = ref.rsplit(":", 1)
    found = c.list_models(model_name=name, exact_match=True, model_version=version)["models"]
    if not found:
        fail(
            "ModelArts.3001",
            f"No model {name} version {version}.",
            "List models with `modelport model list`.",
        )
    return found[0]["model_id"]


def _parse_models(c: Client, refs: list[str], instances: int, spec: str, envs: dict[str, str]) -> list[dict[str, Any]]:
    """`-m REF[@WEIGHT]` options into ServiceConfig entries; weights default to an even split."""
    parsed = []
    for ref in refs:
        model_ref, _, weight = ref.partition("@")
        parsed.append((_resolve_model(c, model_ref), int(weight) if weight else None))
    if all(w is None for _m, w in parsed):
        share = [100 // len(parsed)] * len(parsed)
        share[0] += 100 - sum(share)
        parsed = [(m, share[i]) for i, (m, _w) in enumerate(parsed)]
    return [
        {"model_id": m, "weight": w, "specification": spec, "instance_count": instances, "envs": envs}
        for m, w in parsed
    ]


def _envs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail("ModelArts.0101", f"--env {pair!r} is not KEY=VALUE.")
        out[key] = value
    return out


def _wait_showing(
    c: Client, service_id: str, until: tuple[str, ...], timeout: float, detail: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Poll a service with a progress bar (percent, status, `detail`) until its status is in `until`."""
    with Progress(
        TextColumn("[bold]{task.fields[name]}[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[status]}"),
        TextColumn("[dim]{task.fields[detail]}[/]"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("wait", total=100, name="", status="", detail="")

        def show(svc: dict[str, Any]) -> None:
            progress.update(
                task,
                completed=svc.get("progress") or 0,
                name=svc["service_name"],
                status=styled(svc["status"]),
                detail=detail(svc),
            )

        return c.wait_service(service_id, until, timeout, on_poll=show)


def _instance_counts(svc: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for cfg in svc.get("config", []):
        for inst in cfg.get("instances", []):
            counts[inst["status"]] = counts.get(inst["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def wait_with_progress(c: Client, service_id: str, timeout: float = 600) -> dict[str, Any]:
    """Poll a service and show its progress and instances until it settles."""
    return _wait_showing(c, service_id, DONE, timeout, _instance_counts)


BATCH_DONE = ("finished", "failed", "stopped")


def _seconds(value: float) -> str:
    value = int(value)
    return f"{value // 3600}h{value % 3600 // 60:02d}m" if value >= 3600 else f"{value // 60}m{value % 60:02d}s"


def batch_detail(svc: dict[str, Any]) -> str:
    """One line of batch progress: records done of total, failures, rate and time left."""
    bp = svc.get("batch_progress")
    if not bp:
        return "waiting for instances"
    total = bp["total"] if bp.get("total") is not None else "?"
    parts = [f"{bp['processed']}/{total} records", f"{bp['failed']} failed"]
    if bp.get("records_per_second") and bp.get("state") == "running":
        parts.append(f"{bp['records_per_second']:g}/s")
    if bp.get("eta_seconds") is not None:
        parts.append(f"ETA {_seconds(bp['eta_seconds'])}")
    return ", ".join(parts)


def wait_batch(c: Client, service_id: str, timeout: float = 86400) -> dict[str, Any]:
    """Poll a batch service with a progress bar until its job is finished, failed or stopped."""
    return _wait_showing(c, service_id, BATCH_DONE, timeout, batch_detail)


def _report(svc: dict[str, Any]) -> None:
    console.print(f"Service [bold]{svc['service_name']}[/] is {styled(svc['status'])}.")
    if svc.get("error_msg"):
        console.print(f"[red]{svc['error_msg']}[/]")
    if svc.get("access_address"):
        console.print(f"Address: {svc['access_address']}")


@app.command("deploy")
def deploy(
    name: str = typer.Argument(..., help="Service name."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="MODEL_ID or NAME:VERSION, optionally @WEIGHT; repeat for several versions."
    ),
    instances: int = typer.Option(1, "--instances", "-i", help="Instances per model version."),
    spec: str = typer.Option("modelarts.vm.cpu.2u", "--spec", help="Flavor; see `GET …/services/specifications`."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE environment for the instances."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="A whole CreateService JSON body instead of the flags."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Deploy models as a real-time service (several versions split by weight)."""
    c = client()
    with api_errors():
        if file:
            body = json.loads(file.read_text())
            body.setdefault("service_name", name)
        else:
            if not model:
                fail(
                    "ModelArts.0101",
                    "Name at least one model with --model.",
                    "e.g. -m digits:1.0.0@80 -m digits:2.0.0@20",
                )
            body = {
                "service_name": name,
                "infer_type": "real-time",
                "config": _parse_models(c, model, instances, spec, _envs(env)),
            }
        service_id = c.create_service(body)
        batch = body.get("infer_type") == "batch"
        waiter = wait_batch if batch else wait_with_progress
        svc = waiter(c, service_id) if wait and not as_json else c.get_service(service_id)
        if wait and as_json:
            svc = c.wait_service(service_id, BATCH_DONE if batch else DONE)
    if as_json:
        print_json(svc)
        return
    _report(svc)
    if svc["status"] == "failed":
        raise typer.Exit(1)


@app.command("list")
def list_services(as_json: bool = typer.Option(False, "--json")) -> None:
    """List services."""
    c = client()
    with api_errors():
        data = c.list_services()
    if as_json:
        print_json(data)
        return
    rows = [
        [
            s["service_id"],
            s["service_name"],
            s["infer_type"],
            styled(s["status"]),
            s["invocation_times"],
            s["failed_times"],
            when(s["publish_at"]),
        ]
        for s in data["services"]
    ]
    table(
        f"{data['total_count']} service(s)",
        ["ID", "Name", "Type", "Status", "Calls", "Failed", "Published"],
        rows,
    )


@app.command("show")
def show(
    service: str = typer.Argument(..., help="Service id or name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a service: status, versions, weights and instances."""
    c = client()
    with api_errors():
        svc = c.get_service(c.find_service(service)["service_id"])
    if as_json:
        print_json(svc)
        return
    _report(svc)
    if svc["infer_type"] == "batch":
        bp = svc.get("batch_progress") or {}
        console.print(
            f"Batch {svc.get('progress') or 0}%: {batch_detail(svc)}; "
            f"started {when(svc.get('start_time')) or '-'}, finished {when(svc.get('finished_time')) or '-'}"
        )
        if bp.get("message"):
            console.print(bp["message"])
    else:
        console.print(
            f"Calls {svc['invocation_times']}, failed {svc['failed_times']}; due {when(svc.get('due_time')) or 'never'}"
        )
    rows = []
    for cfg in svc["config"]:
        for inst in cfg["instances"] or [{}]:
            rows.append(
                [
                    f"{cfg['model_name']} {cfg['model_version']}",
                    cfg.get("weight", "-"),  # batch services have no weight
                    styled(cfg["status"]),
                    inst.get("instance_id"),
                    styled(inst.get("status")),
                    inst.get("restarts"),
                    inst.get("pid"),
                ]
            )
    table(None, ["Version", "Weight", "Config status", "Instance", "State", "Restarts", "PID"], rows)


@app.command("update")
def update(
    service: str = typer.Argument(..., help="Service id or name."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="Replace the versions: MODEL_ID or NAME:VERSION[@WEIGHT]."
    ),
    instances: int | None = typer.Option(None, "--instances", "-i", help="New instance count for every version."),
    weights: str | None = typer.Option(None, "--weights", help="New weights in config order, e.g. 70,30."),
    description: str | None = typer.Option(None, "--description"),
    file: Path | None = typer.Option(None, "--file", "-f", help="A whole UpdateService JSON body."),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Change versions, weights, instance counts or description."""
    c = client()
    with api_errors():
        svc = c.get_service(c.find_service(service)["service_id"])
        if file:
            body = json.loads(file.read_text())
        else:
            body: dict[str, Any] = {}
            current = [
                {
                    k: cfg[k]
                    for k in ("model_id", "weight", "specification", "instance_count", "envs")
                    if cfg.get(k) is not None
                }
                for cfg in svc["config"]
            ]
            if model:
                spec = current[0]["specification"] if current else "modelarts.vm.cpu.2u"
                current = _parse_models(c, model, instances or 1, spec, {})
            if instances is not None:
                for cfg in current:
                    cfg["instance_count"] = instances
            if weights:
                values = [int(w) for w in weights.split(",")]
                if len(values) != len(current):
                    fail("ModelArts.0101", f"--weights has {len(values)} values for {len(current)} versions.")
                for cfg, w in zip(current, values, strict=True):
                    cfg["weight"] = w
            if model or instances is not None or weights:
                body["config"] = current
            if description is not None:
                body["description"] = description
        c.update_service(svc["service_id"], body)
        out = wait_with_progress(c, svc["service_id"]) if wait and not as_json else c.get_service(svc["service_id"])
    if as_json:
        print_json(out)
    else:
        _report(out)


def _set_status(service: str, status: str, wait: bool, as_json: bool) -> None:
    c = client()
    with api_errors():
        sid = c.find_service(service)["service_id"]
        c.update_service(sid, {"status": status})
        until = ("stopped",) if status == "stopped" else DONE
        svc = c.wait_service(sid, until) if wait else c.get_service(sid)
    if as_json:
        print_json(svc)
    else:
        _report(svc)


@app.command("start")
def start(
    service: str = typer.Argument(...),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a stopped service."""
    _set_status(service, "running", wait, as_json)


@app.command("stop")
def stop(
    service: str = typer.Argument(...),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stop a service (its instances drain and exit)."""
    _set_status(service, "stopped", wait, as_json)


@app.command("wait")
def wait(
    service: str = typer.Argument(..., help="Service id or name."),
    timeout: float = typer.Option(86400, "--timeout", help="Give up after this many seconds."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Wait with a progress bar: a batch job until it ends, a real-time service until it settles.

    Exits 0 when a batch job finished (or a real-time service runs), 1 otherwise.
    """
    c = client()
    with api_errors():
        found = c.find_service(service)
        sid, batch = found["service_id"], found["infer_type"] == "batch"
        until = BATCH_DONE if batch else DONE
        if as_json:
            svc = c.wait_service(sid, until, timeout)
        else:
            svc = wait_batch(c, sid, timeout) if batch else wait_with_progress(c, sid, timeout)
    if as_json:
        print_json(svc)
    else:
        _report(svc)
        if batch and (svc.get("batch_progress") or {}).get("message"):
            console.print(svc["batch_progress"]["message"])
    if svc["status"] != ("finished" if batch else "running"):
        raise typer.Exit(1)


@app.command("set-qps")
def set_qps(
    service: str = typer.Argument(..., help="Service id or name."),
    qps: int = typer.Argument(..., help="Requests per second through the gateway; 0: back to the default (100)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Set the service's QPS limit (over it: 429 ModelArts.4206 with Retry-After)."""
    c = client()
    with api_errors():
        sid = c.find_service(service)["service_id"]
        c.set_qps(sid, qps or None)
        svc = c.get_service(sid)
    if as_json:
        print_json(svc)
        return
    limit = (svc.get("additional_properties") or {}).get("qps_limit")
    console.print(f"Service [bold]{svc['service_name']}[/]: {limit or 'default'} requests/s.")


@app.command("set-auth")
def set_auth(
    service: str = typer.Argument(..., help="Service id or name."),
    mode: str = typer.Argument(..., help="default (token, AK/SK, bound apps) or none (anyone may call it)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Choose whether calling the service needs a credential (`none` is an explicit opt-out)."""
    c = client()
    with api_errors():
        sid = c.find_service(service)["service_id"]
        c.update_service(sid, {"additional_properties": {"auth": mode}})
        svc = c.get_service(sid)
    if as_json:
        print_json(svc)
        return
    mode_now = svc["additional_properties"].get("auth", "default")
    console.print(f"Service [bold]{svc['service_name']}[/]: auth {mode_now}.")


@app.command("delete")
def delete(service: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete a service."""
    c = client()
    with api_errors():
        sid = c.find_service(service)["service_id"]
        c.delete_service(sid)
    if as_json:
        print_json({"service_id": sid, "deleted": True})
    else:
        console.print(f"Deleting {service} ({sid}).")


@app.command("events")
def events(
    service: str = typer.Argument(...),
    limit: int = typer.Option(50, "--limit", "-n"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a service's events, newest first."""
    c = client()
    with api_errors():
        data = c.events(c.find_service(service)["service_id"], limit=limit)
    if as_json:
        print_json(data)
        return
    rows = [
        [
            when(e["occur_time"]),
            "[red]abnormal[/]" if e["event_type"] == "abnormal" else "normal",
            e["event_info"],
        ]
        for e in data["events"]
    ]
    table(f"Events of {data['service_name']}", ["Time", "Type", "Event"], rows)


def predict(
    service: str = typer.Argument(..., help="Service id or name."),
    json_body: str | None = typer.Option(None, "--json", "-j", help="JSON request body (or @file.json)."),
    file: list[str] = typer.Option(
        [], "--file", "-f", help="FIELD=PATH to upload as multipart (e.g. images=digit.png)."
    ),
    path: str = typer.Option("", "--path", help="Sub-path of the API, e.g. /predict."),
    raw: bool = typer.Option(False, "--raw", help="Print the body only."),
) -> None:
    """Send one prediction through the gateway and print the answer."""
    c = client()
    with api_errors():
        sid = c.find_service(service)["service_id"]
        kwargs: dict[str, Any] = {}
        if json_body is not None:
            text = Path(json_body[1:]).read_text() if json_body.startswith("@") else json_body
            try:
                kwargs["json"] = json.loads(text)
            except ValueError as exc:
                fail("ModelArts.4105", f"--json is not valid JSON: {exc}")
        if file:
            files = {}
            for item in file:
                field, sep, fpath = item.partition("=")
                if not sep:
                    field, fpath = "images", item
                files[field] = (Path(fpath).name, Path(fpath).read_bytes())
            kwargs["files"] = files
        if not kwargs:
            fail("ModelArts.4202", "Empty request.", "Pass --json '{...}' or --file images=PATH.")
        resp = c.predict_raw(sid, path, **kwargs)
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if raw:
        print_json(body) if not isinstance(body, str) else console.print(body)
        return
    origin = "platform error" if isinstance(body, dict) and "error_code" in body else "model"
    console.print(
        f"[bold]{resp.status_code}[/] from {origin} · version {resp.headers.get('x-modelport-version', '?')}"
        f" · instance {resp.headers.get('x-modelport-instance', '?')}"
        f" · request {resp.headers.get('x-request-id', '?')}"
    )
    print_json(body) if not isinstance(body, str) else console.print(body)
    if resp.status_code >= 400:
        raise typer.Exit(1)


def _since_arg(value: str | None) -> str | None:
    """`10m`, `2h`, `1d`, `30s` ago, or an absolute ISO-8601 time / epoch ms, for the API."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1] in units:
        import time

        return str(int((time.time() - int(value[:-1]) * units[value[-1]]) * 1000))
    return value


@app.command("logs")
def logs(
    service: str = typer.Argument(..., help="Service id or name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    instance: list[str] = typer.Option([], "--instance", "-i", help="Only this instance (repeatable)."),
    tail: int = typer.Option(100, "--tail", "-n", help="Start with the newest N lines."),
    since: str | None = typer.Option(None, "--since", help="e.g. 10m, 2h, or an ISO-8601 time."),
    updates: bool = typer.Option(False, "--updates", help="Show the configuration-update history instead."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the instances' stdout/stderr (also of replaced instances), or the update history."""
    c = client()
    params: dict[str, Any] = {"tail": tail, "instance_id": instance or None, "since": _since_arg(since)}
    with api_errors():
        sid = c.find_service(service)["service_id"]
        if not follow:
            data = c.logs(sid, **params)
            if as_json:
                print_json(data)
            elif updates:
                rows = [
                    [
                        when(u["update_time"]),
                        u["result"],
                        ", ".join(
                            f"{x['model_name']} {x['model_version']} w{x.get('weight')} x{x['instance_count']}"
                            for x in u["config"]
                        ),
                        u.get("detail") or "",
                    ]
                    for u in data["logs"]
                ]
                table("Update history", ["Time", "Result", "Config", "Detail"], rows)
            else:
                for e in data["instance_logs"]:
                    _print_log(e)
            return
        try:
            for e in c.follow_logs(sid, **params):
                print_json(e) if as_json else _print_log(e)
        except KeyboardInterrupt:
            pass


def _print_log(e: dict[str, Any]) -> None:
    style = "red" if e["stream"] == "stderr" else "cyan"
    console.print(
        f"[dim]{e['time'][11:23]}[/] [{style}]{e['instance_id']}[/] {e['message']}",
        markup=True,
        highlight=False,
    )
