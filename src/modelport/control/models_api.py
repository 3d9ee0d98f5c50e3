"""Model ("AI application") management, spec §2: import a package, list, show, delete."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from sqlalchemy import func, select

from modelport.control.deps import Principal, allow, platform
from modelport.control.schemas import CreateModelRequest
from modelport.errors import E, PlatformError
from modelport.packages import load_package
from modelport.store.tables import Model, Service
from modelport.timeutil import now_ms

router = APIRouter(tags=["models"])
log = logging.getLogger("modelport.models")


def source_dir(location: str) -> Path:
    """The local directory a `source_location` names: a path or `file://` URL (spec: the parent of model/)."""
    if location.startswith("file://"):
        parsed = urlparse(location)
        path = Path(unquote(parsed.path))
    elif "://" in location:
        raise PlatformError(
            E.MODEL_SOURCE_INVALID,
            location=location,
            detail="only local paths and file:// URLs can be imported",
        )
    else:
        path = Path(location).expanduser()
    if not path.is_dir():
        raise PlatformError(E.MODEL_SOURCE_INVALID, location=location, detail="not a directory on this node")
    if not (path / "model").is_dir():
        raise PlatformError(
            E.MODEL_SOURCE_INVALID,
            location=location,
            detail="it has no model/ directory; point source_location at the directory that holds model/",
        )
    return path.resolve()


def package_digest(root: Path) -> tuple[int, str]:
    """Size and sha256 of a package: every file under root, by sorted relative path, path and bytes hashed."""
    digest = hashlib.sha256()
    size = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def _publish(store: Any, models_dir: Path, model_id: str, src: Path, declared_type: str) -> None:
    """Copy the package into the model store, validate it and mark the model published or failed."""
    dest = models_dir / model_id
    status, reason, fields = "published", None, {}
    try:
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        size, sha = package_digest(dest)
        pkg = load_package(dest)
        if pkg.model_type != declared_type:
            raise PlatformError(
                E.MODEL_CONFIG_INVALID,
                detail=f"model_type is {declared_type} in the request but {pkg.model_type} in config.json; "
                "make them equal",
            )
        fields = {
            "store_path": str(dest),
            "size": size,
            "sha256": sha,
            "config": pkg.config,
            "model_algorithm": pkg.config.get("model_algorithm"),
            "runtime": pkg.config.get("runtime"),
        }
    except PlatformError as exc:
        status, reason = "failed", f"{exc.code}: {exc.message}"
    except Exception as exc:
        log.exception("publishing model %s failed", model_id)
        status, reason = "failed", f"ModelArts.3006: publishing failed: {exc}"
    if status == "failed":
        shutil.rmtree(dest, ignore_errors=True)
    with store.session() as s:
        model = s.get(Model, model_id)
        if model is None:  # deleted while publishing
            shutil.rmtree(dest, ignore_errors=True)
            return
        model.status, model.failed_reason = status, reason
        for key, value in fields.items():
            setattr(model, key, value)


def model_body(m: Model) -> dict[str, Any]:
    cfg = m.config or {}
    health = cfg.get("health")
    return {
        "model_id": m.id,
        "model_name": m.name,
        "model_version": m.version,
        "model_type": m.model_type,
        "runtime": m.runtime,
        "model_status": m.status,
        "failed_reason": m.failed_reason,
        "model_size": m.size,
        "model_sha256": m.sha256,
        "create_at": m.created_at,
        "description": m.description,
        "tenant": m.project_id,
        "project": m.project_id,
        "owner": m.owner,
        "workspace_id": m.request.get("workspace_id", "0"),
        "source_location": m.source_location,
        "source_copy": "true",
        "model_source": "custom",
        "model_algorithm": m.model_algorithm or cfg.get("model_algorithm"),
        "execution_code": f"{m.store_path}/model/customize_service.py" if m.store_path else None,
        "apis": json.dumps(cfg.get("apis", [])),
        "health": health,
        "config": json.dumps(cfg) if cfg else None,
        "install_type": m.request.get("install_type") or ["real-time", "batch"],
        "dependencies": cfg.get("dependencies", []),
        "model_metrics": json.dumps(cfg.get("metrics")) if cfg.get("metrics") else m.request.get("model_metrics"),
    }


@router.post("/v1/{project_id}/models")
def create_model(
    project_id: str,
    body: CreateModelRequest,
    request: Request,
    tasks: BackgroundTasks,
    who: Principal = Depends(allow("modelarts:model:create")),
) -> dict[str, str]:
    """Import a model package from a local directory or `file://` URL; it publishes in the background."""
    p = platform(request)
    if body.model_type == "Template":
        raise PlatformError(E.MODEL_CONFIG_UNSUPPORTED, detail="model_type Template is not supported; import a package")
    if not body.source_location:
        raise PlatformError(E.MODEL_PARAM_INVALID, param="source_location", detail="is required")
    src = source_dir(body.source_location)
    model_id = str(uuid.uuid4())
    with p.store.session() as s:
        if s.scalar(
            select(Model.id).where(
                Model.project_id == project_id,
                Model.name == body.model_name,
                Model.version == body.model_version,
            )
        ):
            raise PlatformError(E.MODEL_EXISTS, name=body.model_name, version=body.model_version)
        s.add(
            Model(
                id=model_id,
                project_id=project_id,
                owner=who.user_name,
                name=body.model_name,
                version=body.model_version,
                model_type=body.model_type,
                runtime=body.runtime,
                status="publishing",
                description=body.description or "",
                source_location=body.source_location,
                request=body.model_dump(exclude_none=True),
                created_at=now_ms(),
            )
        )
    tasks.add_task(_publish, p.store, p.settings.models_dir, model_id, src, body.model_type)
    return {"model_id": model_id}


@router.get("/v1/{project_id}/models")
def list_models(
    project_id: str,
    request: Request,
    model_name: str | None = None,
    exact_match: bool = False,
    model_version: str | None = None,
    model_status: str | None = None,
    description: str | None = None,
    model_type: str | None = None,
    not_model_type: str | None = None,
    workspace_id: str | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=1000),
    sort_by: str = Query("create_at", pattern="^(create_at|model_version|model_size)$"),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    _who: Principal = Depends(allow("modelarts:model:list")),
) -> dict[str, Any]:
    if model_type and not_model_type:
        raise PlatformError(E.INVALID_ARGUMENT, detail="model_type and not_model_type cannot be used together")
    q = select(Model).where(Model.project_id == project_id)
    if model_name:
        q = q.where(Model.name == model_name if exact_match else Model.name.contains(model_name, autoescape=True))
    if model_version:
        q = q.where(Model.version == model_version)
    if model_status:
        q = q.where(Model.status == model_status)
    if description:
        q = q.where(Model.description.contains(description, autoescape=True))
    if model_type:
        q = q.where(Model.model_type == model_type)
    if not_model_type:
        q = q.where(Model.model_type != not_model_type)
    column = {"create_at": Model.created_at, "model_version": Model.version, "model_size": Model.size}[sort_by]
    q = q.order_by(column.asc() if order == "asc" else column.desc(), Model.id)
    with platform(request).store.session() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.offset(offset).limit(limit)).all()
        models = [model_body(m) for m in rows]
    if workspace_id:
        models = [m for m in models if m["workspace_id"] == workspace_id]
    return {"total_count": total, "count": len(models), "models": models}


def _get_model(s: Any, project_id: str, model_id: str) -> Model:
    model = s.get(Model, model_id)
    if model is None or model.project_id != project_id:
        raise PlatformError(E.MODEL_NOT_FOUND, model_id=model_id)
    return model


@router.get("/v1/{project_id}/models/{model_id}")
def show_model(
    project_id: str, model_id: str, request: Request, _who: Principal = Depends(allow("modelarts:model:get"))
) -> dict[str, Any]:
    with platform(request).store.session() as s:
        return model_body(_get_model(s, project_id, model_id))


def _users_of(s: Any, project_id: str, model_id: str) -> list[str]:
    services = s.scalars(select(Service).where(Service.project_id == project_id, Service.desired != "deleted")).all()
    return [svc.name for svc in services if any(c["model_id"] == model_id for c in svc.config)]


def _delete_one(s: Any, store_dir: Path, project_id: str, model: Model) -> None:
    users = _users_of(s, project_id, model.id)
    if users:
        raise PlatformError(E.MODEL_IN_USE, model_id=model.id, services=", ".join(users))
    s.delete(model)
    shutil.rmtree(store_dir / model.id, ignore_errors=True)


@router.delete("/v1/{project_id}/models/{model_id}")
def delete_model(
    project_id: str,
    model_id: str,
    request: Request,
    cascade: bool = False,
    _who: Principal = Depends(allow("modelarts:model:delete")),
) -> dict[str, Any]:
    """Delete a model (refused while a service uses it); `cascade=true` deletes every version of its name."""
    p = platform(request)
    with p.store.session() as s:
        model = _get_model(s, project_id, model_id)
        if not cascade:
            _delete_one(s, p.settings.models_dir, project_id, model)
            return {"model_id": model_id}
        siblings = s.scalars(select(Model).where(Model.project_id == project_id, Model.name == model.name)).all()
        ok, failed = [], []
        for m in siblings[:20]:
            try:
                _delete_one(s, p.settings.models_dir, project_id, m)
                ok.append(m.id)
            except PlatformError as exc:
                failed.append({"model_id": m.id, "error_code": exc.code, "error_msg": exc.message})
        return {"delete_success_list": ok, "delete_failed_list": failed}
