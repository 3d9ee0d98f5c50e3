"""Service logs: `GET /v1/{project_id}/services/{service_id}/logs`.

The spec's response (`logs[]`, the configuration-update history) is kept as it is; the
instances' stdout/stderr come alongside in `instance_logs[]`, filtered by instance, tail and
since, and `follow=true` streams new lines as server-sent events until the client leaves.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from modelport.backends.base import InstanceHandle
from modelport.backends.logshim import LogFollower, parse_line, timestamp
from modelport.control.deps import Principal, allow, platform
from modelport.control.services_api import _get_service
from modelport.errors import E, PlatformError
from modelport.store.tables import Instance, Model, ServiceUpdate

router = APIRouter(tags=["services"])

_KEEPALIVE_S = 15.0
_POLL_S = 0.25
_RESCAN_S = 2.0


def _since(value: str | None) -> str | None:
    """`since` as the log files write time: accepts epoch milliseconds or an ISO-8601 time."""
    if value is None:
        return None
    try:
        if value.isdigit():
            return timestamp(int(value) * 1_000_000)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return timestamp(int(dt.timestamp() * 1_000_000_000))
    except ValueError as exc:
        raise PlatformError(E.INVALID_ARGUMENT, detail=f"since={value!r}: use epoch milliseconds or ISO-8601") from exc


def _entry(instance_id: str, raw: str) -> dict[str, str]:
    line = parse_line(raw)
    return {"instance_id": instance_id, "time": line.time, "stream": line.stream, "message": line.text}


def _instances(s: Any, service_id: str, wanted: list[str] | None) -> list[tuple[str, str]]:
    rows = s.scalars(select(Instance).where(Instance.service_id == service_id).order_by(Instance.created_at)).all()
    out = [(i.id, i.log_path or (i.handle or {}).get("log_path")) for i in rows if (not wanted or i.id in wanted)]
    return [(iid, path) for iid, path in out if path]


def _read(backend: Any, instance_id: str, path: str, tail: int, since: str | None) -> list[dict[str, str]]:
    handle = InstanceHandle(instance_id, "local", "", 0, 0, 0, path)
    # With `since`, the newest `tail` lines at or after it; read a little more than tail to filter.
    raw = list(backend.read_logs(handle, tail=tail if since is None else None))
    entries = [_entry(instance_id, r) for r in raw]
    if since is not None:
        entries = [e for e in entries if e["time"] >= since][-tail:] if tail else []
    return entries


def _update_logs(s: Any, service_id: str, update_time: int | None) -> list[dict[str, Any]]:
    q = select(ServiceUpdate).where(ServiceUpdate.service_id == service_id).order_by(ServiceUpdate.update_time.desc())
    if update_time is not None:
        q = q.where(ServiceUpdate.update_time == update_time)
    rows = s.scalars(q).all()
    ids = {c["model_id"] for r in rows for c in r.config}
    models = {m.id: m for m in s.scalars(select(Model).where(Model.id.in_(ids)))}
    out = []
    for r in rows:
        configs = []
        for c in r.config:
            m = models.get(c["model_id"])
            configs.append(
                {
                    **{k: v for k, v in c.items() if k != "revision"},
                    "model_name": m.name if m else None,
                    "model_version": m.version if m else None,
                }
            )
        out.append(
            {
                "update_time": r.update_time,
                "result": r.result,
                "detail": r.detail,
                "config": configs,
                "extend_config": [],
            }
        )
    return out


@router.get("/v1/{project_id}/services/{service_id}/logs", response_model=None)
def service_logs(
    project_id: str,
    service_id: str,
    request: Request,
    instance_id: list[str] | None = Query(None, description="Only these instances (repeat for several)."),
    tail: int = Query(200, ge=0, le=10000, description="Newest N lines (over all chosen instances)."),
    since: str | None = Query(None, description="Only lines at or after this time (epoch ms or ISO-8601)."),
    follow: bool = Query(False, description="Stream new lines as server-sent events."),
    update_time: int | None = Query(None, description="Filter of the update history (spec)."),
    _who: Principal = Depends(allow("modelarts:service:getLogs")),
) -> dict[str, Any] | StreamingResponse:
    p = platform(request)
    since_ts = _since(since)
    with p.store.session() as s:
        svc = _get_service(s, project_id, service_id)
        targets = _instances(s, service_id, instance_id)
        if instance_id and not targets:
            raise PlatformError(
                E.INVALID_ARGUMENT, detail=f"no instance {', '.join(instance_id)} in service {service_id}"
            )
        body = {"service_name": svc.name, "service_id": svc.id}
        if not follow:
            body["logs"] = _update_logs(s, service_id, update_time)
    # Followers start before the backlog is read: a line written in between shows twice, never zero times.
    followers = {iid: LogFollower(Path(path)) for iid, path in targets} if follow else {}
    per_instance = [_read(p.backend, iid, path, tail, since_ts) for iid, path in targets]
    merged = list(heapq.merge(*per_instance, key=lambda e: e["time"]))[-tail:] if tail else []
    if not follow:
        return {**body, "instance_logs": merged}
    return StreamingResponse(
        _follow(request, project_id, service_id, instance_id, merged, followers),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _follow(
    request: Request,
    project_id: str,
    service_id: str,
    wanted: list[str] | None,
    backlog: list[dict[str, str]],
    followers: dict[str, LogFollower],
) -> AsyncIterator[bytes]:
    p = platform(request)
    for entry in backlog:
        yield f"data: {json.dumps(entry)}\n\n".encode()

    def scan() -> list[tuple[str, str]] | None:
        with p.store.session() as s:
            try:
                _get_service(s, project_id, service_id)
            except PlatformError:
                return None
            return _instances(s, service_id, wanted)

    last_scan = last_sent = 0.0
    while not await request.is_disconnected():
        now = time.monotonic()
        if now - last_scan >= _RESCAN_S:
            last_scan = now
            targets = await asyncio.to_thread(scan)
            if targets is None:
                yield b'event: end\ndata: {"reason": "service deleted"}\n\n'
                return
            for iid, path in targets:
                if iid not in followers:
                    # Instances known at the start continue from now; new ones from their first line.
                    followers[iid] = LogFollower(Path(path), from_start=True)  # a new instance: all of it
        out = []
        for iid, f in followers.items():
            out.extend(_entry(iid, raw) for raw in f.poll())
        for entry in sorted(out, key=lambda e: e["time"]):
            yield f"data: {json.dumps(entry)}\n\n".encode()
            last_sent = now
        if now - last_sent >= _KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(_POLL_S)
