"""Service management, spec §1: deploy, list, show, update (incl. start/stop), delete, events, flavors."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.batch.checkpoint import progress_fields
from modelport.batch.spec import validate as validate_batch
from modelport.control import service_limits
from modelport.control.deps import Principal, allow, caller, platform
from modelport.control.flavors import node_capacity, resources, specifications_body
from modelport.control.schemas import CreateServiceRequest, ScheduleIn, ServiceConfigIn, UpdateServiceRequest
from modelport.errors import E, PlatformError
from modelport.store.events import add_event
from modelport.store.tables import Event, Instance, Model, Service, ServiceUpdate
from modelport.timeutil import now_ms

router = APIRouter(tags=["services"])

# Spec fields of CreateService kept in `Service.extra` and echoed back; the rest of extra is internal.
_SPEC_EXTRA = frozenset(
    {
        "cluster_id",
        "pool_name",
        "vpc_id",
        "security_group_id",
        "subnet_network_id",
        "load_balancer_policy",
        "service_secrets",
        "priority",
    }
)
_UNIT_MS = {"MINUTES": 60_000, "HOURS": 3_600_000, "DAYS": 86_400_000}
_EVENT_INFO_FORBIDDEN = re.compile(r"[`(){}';,\[\]<>/?]")
LIVE_INSTANCE = ("starting", "ready", "notReady", "crashed", "draining")


def revision_of(cfg: dict[str, Any]) -> str:
    """What an instance of this config runs; a change of it means new instances (a roll)."""
    key = {k: cfg.get(k) for k in ("model_id", "envs", "specification", "custom_spec")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def due_time(schedule: list[dict[str, Any]] | None, start_ms: int) -> int | None:
    for item in schedule or []:
        if item.get("type") == "stop":
            return start_ms + int(item["duration"]) * _UNIT_MS[item["time_unit"]]
    return None


def _validate_configs(
    s: Session,
    p: Any,
    project_id: str,
    configs: list[ServiceConfigIn],
    exclude_service: str | None,
    batch: bool = False,
) -> list[dict[str, Any]]:
    """Check models, weights, duplicates and capacity; return the configs to store."""
    weights = [c.weight for c in configs]
    bad = any(w is None for w in weights) or any(not 0 <= w <= 100 for w in weights) or sum(weights) != 100  # type: ignore[operator,misc,arg-type]
    if bad and not batch:  # a batch service has one config and no traffic to split (spec §6)
        raise PlatformError(E.WEIGHTS_INVALID, weights=weights)
    seen: dict[str, int] = {}
    out = []
    cpu_needed = 0.0
    for i, c in enumerate(configs):
        model = s.get(Model, c.model_id)
        if model is None or model.project_id != project_id:
            raise PlatformError(E.SERVICE_MODEL_NOT_FOUND, model_id=c.model_id, index=i)
        if model.status != "published":
            raise PlatformError(E.MODEL_NOT_PUBLISHED, model_id=c.model_id, status=model.status)
        if c.model_id in seen:
            raise PlatformError(E.DUPLICATE_MODEL_VERSION, model=f"{model.name} {model.version}")
        seen[c.model_id] = i
        custom = c.custom_spec.model_dump(exclude_none=True) if c.custom_spec else None
        cpu, _mem = resources(c.specification, custom)
        cpu_needed += cpu * c.instance_count
        entry = c.model_dump(exclude_none=True)
        entry["custom_spec"] = custom
        entry["revision"] = revision_of(entry)
        out.append(entry)
    capacity, _ = node_capacity(p.settings)
    in_use = 0.0
    for svc in s.scalars(select(Service).where(Service.desired == "running")).all():
        if svc.id == exclude_service:
            continue
        for c in svc.config:
            in_use += resources(c["specification"], c.get("custom_spec"))[0] * c["instance_count"]
    if in_use + cpu_needed > capacity:
        raise PlatformError(
            E.TOO_MANY_INSTANCES,
            requested=sum(c.instance_count for c in configs),
            spec=", ".join(sorted({c.specification for c in configs})),
            detail=f"{capacity - in_use:g} of {capacity:g} vCPU free",
        )
    return out


def _validate_batch(p: Any, project_id: str, configs: list[ServiceConfigIn]) -> None:
    """Batch config (spec §6) and a writable dest_path, checked before anything is stored."""
    with p.store.session() as s:
        model = s.get(Model, configs[0].model_id) if configs else None
        model_config = model.config if model is not None and model.project_id == project_id else None
    validate_batch([c.model_dump(exclude_none=True) for c in configs], model_config)


def _get_service(s: Session, project_id: str, service_id: str) -> Service:
    svc = s.get(Service, service_id)
    if svc is None or svc.project_id != project_id or svc.desired == "deleted":
        raise PlatformError(E.SERVICE_NOT_FOUND, service_id=service_id)
    return svc


def _config_status(service_status: str, live: list[Instance], count: int) -> str:
    ready = sum(1 for i in live if i.status == "ready")
    if service_status in ("stopped", "stopping", "deleting"):
        return service_status
    if ready >= count:
        return "running"
    if service_status == "deploying":
        return "deploying"
    if ready:
        return "concerning"
    return "failed" if service_status == "failed" else "deploying"


def service_body(s: Session, svc: Service, base_url: str, detail: bool = True) -> dict[str, Any]:
    models = {m.id: m for m in s.scalars(select(Model).where(Model.id.in_([c["model_id"] for c in svc.config]))).all()}
    instances = s.scalars(select(Instance).where(Instance.service_id == svc.id)).all() if detail else []
    body: dict[str, Any] = {
        "service_id": svc.id,
        "service_name": svc.name,
        "description": svc.description,
        "tenant": svc.project_id,
        "project": svc.project_id,
        "owner": svc.owner,
        "publish_at": svc.publish_at,
        "update_time": svc.update_time,
        "transition_at": svc.transition_at,
        "operation_time": svc.update_time,
        "infer_type": svc.infer_type,
        "workspace_id": svc.workspace_id,
        "status": svc.status,
        "progress": svc.progress,
        "error_msg": svc.error_msg,
        "invocation_times": svc.invocation_times,
        "failed_times": svc.failed_times,
        "is_shared": False,
        "shared_count": 0,
        "is_free": True,
        "schedule": svc.schedule,
        "due_time": svc.due_time,
        "additional_properties": svc.additional_properties,
        "access_address": f"{base_url.rstrip('/')}/v1/infers/{svc.id}" if svc.infer_type == "real-time" else None,
        **{k: v for k, v in svc.extra.items() if k in _SPEC_EXTRA},
    }
    if "llm_stats" in svc.extra:
        body["llm_stats"] = svc.extra["llm_stats"]
    if svc.infer_type == "batch":  # job progress instead of deploy progress; start/finished times
        body.update(progress_fields(s, svc))
    if not detail:
        return body
    configs = []
    for slot, c in enumerate(svc.config):
        m = models.get(c["model_id"])
        mine = [i for i in instances if i.slot == slot and i.status in (*LIVE_INSTANCE, "failed")]
        live = [i for i in mine if i.status in LIVE_INSTANCE]
        configs.append(
            {
                **{k: v for k, v in c.items() if k != "revision"},
                "model_name": m.name if m else None,
                "model_version": m.version if m else None,
                "status": _config_status(svc.status, live, c["instance_count"]),
                "scaling": False,
                "support_debug": False,
                "instances": [
                    {
                        "instance_id": i.id,
                        "status": i.status,
                        "model_id": i.model_id,
                        "restarts": i.restarts,
                        "exit_code": i.exit_code,
                        "message": i.message,
                        "started_at": i.started_at,
                        "ready_at": i.ready_at,
                        "port": (i.handle or {}).get("port"),
                        "pid": (i.handle or {}).get("pid"),
                    }
                    for i in mine
                ],
            }
        )
    if svc.infer_type == "batch":
        for cfg in configs:
            cfg.update(start_time=body["start_time"], finished_time=body["finished_time"])
            if svc.status in ("finished", "failed"):
                cfg["status"] = svc.status
    body["config"] = configs
    return body


@router.get("/v1/{project_id}/services/specifications")
def list_specifications(
    project_id: str,
    request: Request,
    is_personal_cluster: bool = False,
    infer_type: str = "real-time",
    _who: Principal = Depends(allow("modelarts:service:list")),
) -> dict[str, Any]:
    return specifications_body()


@router.post("/v1/{project_id}/services")
def create_service(
    project_id: str,
    body: CreateServiceRequest,
    request: Request,
    who: Principal = Depends(allow("modelarts:service:create")),
) -> dict[str, Any]:
    """Deploy a service. Validation is complete before anything is stored; the orchestrator then starts it."""
    p = platform(request)
    properties = service_limits.check(body.additional_properties)
    if body.infer_type not in ("real-time", "batch"):
        raise PlatformError(E.INFER_TYPE_UNSUPPORTED, infer_type=body.infer_type)
    if body.infer_type == "batch":
        _validate_batch(p, project_id, body.config)
    service_id = str(uuid.uuid4())
    now = now_ms()
    with p.store.session() as s:
        if s.scalar(
            select(Service.id).where(
                Service.project_id == project_id,
                Service.name == body.service_name,
                Service.desired != "deleted",
            )
        ):
            raise PlatformError(E.SERVICE_EXISTS, name=body.service_name)
        configs = _validate_configs(s, p, project_id, body.config, None, batch=body.infer_type == "batch")
        schedule = [x.model_dump() for x in body.schedule] if body.schedule else None
        extra = body.model_dump(
            include={
                "cluster_id",
                "pool_name",
                "vpc_id",
                "security_group_id",
                "subnet_network_id",
                "load_balancer_policy",
                "service_secrets",
                "priority",
            },
            exclude_none=True,
        )
        s.add(
            Service(
                id=service_id,
                project_id=project_id,
                owner=who.user_name,
                name=body.service_name,
                description=body.description or "",
                infer_type=body.infer_type,
                workspace_id=body.workspace_id,
                desired="running",
                status="deploying",
                progress=0,
                config=configs,
                schedule=schedule,
                due_time=due_time(schedule, now),
                additional_properties=properties,
                extra=extra,
                publish_at=now,
                update_time=now,
                transition_at=now,
            )
        )
        s.flush()
        s.add(ServiceUpdate(service_id=service_id, generation=1, update_time=now, result="RUNNING", config=configs))
        add_event(s, service_id, project_id, f"Start to deploy service {body.service_name}.")
        if schedule:
            add_event(s, service_id, project_id, "Auto-stop is enabled.")
    p.wake()
    return {"service_id": service_id, "resource_ids": []}


@router.get("/v1/{project_id}/services")
def list_services(
    project_id: str,
    request: Request,
    service_id: str | None = None,
    service_name: str | None = None,
    model_id: str | None = None,
    workspace_id: str | None = None,
    infer_type: str | None = None,
    status: str | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=1000),
    sort_by: str = Query("publish_at", pattern="^(publish_at|service_name|transition_at)$"),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    _who: Principal = Depends(allow("modelarts:service:list")),
) -> dict[str, Any]:
    q = select(Service).where(Service.project_id == project_id, Service.desired != "deleted")
    if service_id:
        q = q.where(Service.id == service_id)
    if service_name:
        q = q.where(Service.name.contains(service_name, autoescape=True))
    if workspace_id:
        q = q.where(Service.workspace_id == workspace_id)
    if infer_type:
        q = q.where(Service.infer_type == infer_type)
    if status:
        q = q.where(Service.status == status)
    column = {
        "publish_at": Service.publish_at,
        "service_name": Service.name,
        "transition_at": Service.transition_at,
    }[sort_by]
    q = q.order_by(column.asc() if order == "asc" else column.desc(), Service.id)
    base = str(request.base_url)
    with platform(request).store.session() as s:
        rows = list(s.scalars(q).all())
        if model_id:
            rows = [r for r in rows if any(c["model_id"] == model_id for c in r.config)]
        page = rows[offset : offset + limit]
        services = [service_body(s, svc, base, detail=False) for svc in page]
    return {"total_count": len(rows), "count": len(services), "services": services}


@router.get("/v1/{project_id}/services/{service_id}")
def show_service(
    project_id: str, service_id: str, request: Request, _who: Principal = Depends(allow("modelarts:service:get"))
) -> dict[str, Any]:
    with platform(request).store.session() as s:
        return service_body(s, _get_service(s, project_id, service_id), str(request.base_url))


def _apply_status(s: Session, svc: Service, wanted: str) -> None:
    if svc.status == "deleting":
        raise PlatformError(E.STATE_CONFLICT, status=svc.status, action=f"setting status {wanted}", hint="")
    if wanted == "stopped":
        if svc.desired in ("stopped", "finished"):
            return
        svc.desired, svc.status, svc.error_msg = "stopped", "stopping", None
        add_event(s, svc.id, svc.project_id, f"Service {svc.name} is stopping.")
    else:
        if svc.desired == "running" and svc.status not in ("failed",):
            return
        if svc.desired == "finished":
            raise PlatformError(
                E.STATE_CONFLICT,
                status="finished",
                action="starting",
                hint="Its results are in dest_path; create a new batch service to run the job again.",
            )
        if svc.status == "stopping":
            raise PlatformError(
                E.STATE_CONFLICT,
                status=svc.status,
                action="starting",
                hint="Wait until it is stopped, then start it.",
            )
        now = now_ms()
        svc.desired, svc.status, svc.error_msg, svc.progress = "running", "deploying", None, 0
        svc.due_time = due_time(svc.schedule, now)
        # A start is a fresh attempt: instances that failed before get their start budget back.
        for inst in s.scalars(select(Instance).where(Instance.service_id == svc.id, Instance.status == "failed")):
            inst.status = "stopped"
        add_event(s, svc.id, svc.project_id, f"Start service {svc.name}.")
    svc.transition_at = now_ms()


@router.put("/v1/{project_id}/services/{service_id}")
def update_service(
    project_id: str,
    service_id: str,
    body: UpdateServiceRequest,
    request: Request,
    _who: Principal = Depends(caller),
) -> dict[str, Any]:
    """Change config, description, schedule or status; with `status` in the body only it is applied (spec)."""
    _who.require("modelarts:service:action" if body.status is not None else "modelarts:service:update")
    p = platform(request)
    with p.store.session() as s:
        svc = _get_service(s, project_id, service_id)
        if body.status is not None:
            _apply_status(s, svc, body.status)
        else:
            if svc.status in ("stopping", "deleting"):
                raise PlatformError(
                    E.STATE_CONFLICT, status=svc.status, action="updating", hint="Wait until it has finished."
                )
            if body.config is not None and svc.infer_type == "batch":
                raise PlatformError(
                    E.BATCH_CONFIG_INVALID,
                    detail="the config of a batch service cannot be changed; create a new batch service",
                )
            if body.config is not None:
                _update_config(s, p, svc, body.config)
            if body.description is not None:
                svc.description = body.description
            if body.schedule is not None:
                _update_schedule(s, svc, body.schedule)
            if body.additional_properties is not None:
                svc.additional_properties = service_limits.merge(svc.additional_properties, body.additional_properties)
            extra = body.model_dump(include={"load_balancer_policy", "service_secrets", "priority"}, exclude_none=True)
            if extra:
                svc.extra = {**svc.extra, **extra}
        svc.update_time = now_ms()
    p.wake()
    return {}


def _update_config(s: Session, p: Any, svc: Service, configs: list[ServiceConfigIn]) -> None:
    new = _validate_configs(s, p, svc.project_id, configs, svc.id)
    old = svc.config
    instances_change = [c["revision"] for c in new] != [c["revision"] for c in old] or [
        c["instance_count"] for c in new
    ] != [c["instance_count"] for c in old]
    if instances_change:
        # What runs now, so that a failed roll can go back to it.
        svc.extra = {**svc.extra, "previous_config": old}
    svc.extra = {k: v for k, v in svc.extra.items() if k != "update_error"}
    svc.config = new
    svc.generation += 1
    rolling = instances_change and svc.desired == "running"
    result = "RUNNING" if rolling else "SUCCESS"  # a weight change is done once the route table has it
    s.add(ServiceUpdate(service_id=svc.id, generation=svc.generation, update_time=now_ms(), result=result, config=new))
    what = "instances" if instances_change else "weights"
    add_event(s, svc.id, svc.project_id, f"Service {svc.name} is updating its {what}.")
    if instances_change and svc.desired == "running":
        svc.status, svc.progress, svc.error_msg = "deploying", 0, None
        svc.transition_at = now_ms()
        for inst in s.scalars(select(Instance).where(Instance.service_id == svc.id, Instance.status == "failed")):
            inst.status = "stopped"


def _update_schedule(s: Session, svc: Service, schedule: list[ScheduleIn]) -> None:
    svc.schedule = [x.model_dump() for x in schedule] or None
    svc.due_time = due_time(svc.schedule, now_ms()) if svc.desired == "running" else None
    add_event(s, svc.id, svc.project_id, "Auto-stop is enabled." if svc.schedule else "Auto-stop is disabled.")


@router.delete("/v1/{project_id}/services/{service_ids}")
def delete_service(
    project_id: str, service_ids: str, request: Request, _who: Principal = Depends(allow("modelarts:service:delete"))
) -> dict[str, Any]:
    """Delete one or several (comma-joined) services; instances are drained and stopped in the background."""
    p = platform(request)
    ids = [i.strip() for i in service_ids.split(",") if i.strip()]
    with p.store.session() as s:
        services = [_get_service(s, project_id, sid) for sid in ids]
        for svc in services:
            svc.desired, svc.status, svc.transition_at = "deleted", "deleting", now_ms()
            add_event(s, svc.id, svc.project_id, f"Service {svc.name} is being deleted.")
    p.wake()
    return {}


@router.get("/v1/{project_id}/services/{service_id}/events")
def list_events(
    project_id: str,
    service_id: str,
    request: Request,
    event_type: str | None = Query(None, pattern="^(normal|abnormal)$"),
    event_info: str | None = None,
    start_time: int | None = None,
    end_time: int | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=1000),
    sort_by: str = Query("occur_time", pattern="^occur_time$"),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    _who: Principal = Depends(allow("modelarts:service:getEvents")),
) -> dict[str, Any]:
    if event_info and _EVENT_INFO_FORBIDDEN.search(event_info):
        raise PlatformError(E.INVALID_ARGUMENT, detail="event_info must not contain any of `(){}';,[]<>/?")
    with platform(request).store.session() as s:
        svc = _get_service(s, project_id, service_id)
        q = select(Event).where(Event.service_id == service_id)
        if event_type:
            q = q.where(Event.event_type == event_type)
        if event_info:
            q = q.where(Event.event_info.contains(event_info, autoescape=True))
        if start_time is not None:
            q = q.where(Event.occur_time >= start_time)
        if end_time is not None:
            q = q.where(Event.occur_time <= end_time)
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        q = q.order_by(
            Event.occur_time.asc() if order == "asc" else Event.occur_time.desc(),
            Event.id.desc() if order == "desc" else Event.id.asc(),
        )
        rows = s.scalars(q.offset(offset).limit(limit)).all()
        events = [{"event_type": e.event_type, "event_info": e.event_info, "occur_time": e.occur_time} for e in rows]
        return {
            "service_name": svc.name,
            "service_id": svc.id,
            "total_count": total,
            "count": len(events),
            "events": events,
        }
