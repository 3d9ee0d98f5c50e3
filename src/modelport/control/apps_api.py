"""Apps for app authentication of predictions (spec §5.3): AppKey/AppSecret, AppCodes, bindings to services.

- `POST/GET /v1/{project_id}/apps`, `GET/DELETE /v1/{project_id}/apps/{app_id}`
- `POST/GET /v1/{project_id}/apps/{app_id}/app-codes`, `DELETE …/app-codes/{code_id}`
- `POST/GET /v1/{project_id}/apps/{app_id}/bindings`, `DELETE …/bindings/{service_id}`

A service accepts an app's AppCode or AppKey/AppSecret signature only while the app is bound to
it. The AppSecret and each AppCode are returned once, at creation; the secret is stored sealed,
an AppCode only as its SHA-256.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.auth.snapshot import code_digest
from modelport.control.credentials_api import new_secret
from modelport.control.deps import Principal, allow, platform
from modelport.errors import E, PlatformError
from modelport.store.tables import App, AppBinding, AppCode, Service
from modelport.timeutil import now_ms

router = APIRouter(tags=["apps"])

MAX_CODES_PER_APP = 5  # APIG: at most 5 AppCodes per credential


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateAppRequest(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = Field(default="", max_length=255)


class CreateAppCodeRequest(_Strict):
    app_code: str | None = Field(
        default=None, min_length=32, max_length=180, pattern=r"^[A-Za-z0-9+/=_-]+$", description="Your own code"
    )


class BindRequest(_Strict):
    service_id: str = Field(min_length=1, max_length=64)


def _app_body(s: Session, app: App) -> dict[str, Any]:
    codes = s.scalars(select(AppCode).where(AppCode.app_id == app.id).order_by(AppCode.created_at))
    bound = s.scalars(select(AppBinding.service_id).where(AppBinding.app_id == app.id))
    return {
        "app_id": app.id,
        "name": app.name,
        "description": app.description,
        "app_key": app.app_key,
        "owner": app.owner,
        "created_at": app.created_at,
        "app_codes": [_code_body(c) for c in codes],
        "services": sorted(bound),
    }


def _code_body(c: AppCode) -> dict[str, Any]:
    return {"id": c.id, "hint": c.hint + "…", "created_at": c.created_at}


def _get_app(s: Session, project_id: str, app_id: str) -> App:
    app = s.get(App, app_id)
    if app is None or app.project_id != project_id:
        raise PlatformError(E.APP_NOT_FOUND, app_id=app_id)
    return app


@router.post("/v1/{project_id}/apps", status_code=201)
def create_app(
    project_id: str,
    body: CreateAppRequest,
    request: Request,
    who: Principal = Depends(allow("modelarts:app:create")),
) -> dict[str, Any]:
    """Create an app with a fresh AppKey/AppSecret (the secret is shown only in this answer)."""
    p = platform(request)
    secret = new_secret()
    with p.store.session() as s:
        if s.scalar(select(App.id).where(App.project_id == project_id, App.name == body.name)):
            raise PlatformError(E.APP_EXISTS, name=body.name)
        app = App(
            id=uuid.uuid4().hex,
            project_id=project_id,
            name=body.name,
            description=body.description,
            owner=who.user_name,
            app_key=uuid.uuid4().hex,
            secret_sealed=p.box.seal(secret),
            created_at=now_ms(),
        )
        s.add(app)
        s.flush()
        out = {**_app_body(s, app), "app_secret": secret}
    p.auth.refresh()
    return out


@router.get("/v1/{project_id}/apps")
def list_apps(
    project_id: str, request: Request, _who: Principal = Depends(allow("modelarts:app:list"))
) -> dict[str, Any]:
    with platform(request).store.session() as s:
        apps = [_app_body(s, a) for a in s.scalars(select(App).where(App.project_id == project_id).order_by(App.name))]
    return {"total_count": len(apps), "count": len(apps), "apps": apps}


@router.get("/v1/{project_id}/apps/{app_id}")
def show_app(
    project_id: str, app_id: str, request: Request, _who: Principal = Depends(allow("modelarts:app:list"))
) -> dict[str, Any]:
    with platform(request).store.session() as s:
        return _app_body(s, _get_app(s, project_id, app_id))


@router.delete("/v1/{project_id}/apps/{app_id}", status_code=204)
def delete_app(
    project_id: str, app_id: str, request: Request, _who: Principal = Depends(allow("modelarts:app:delete"))
) -> Response:
    """Delete an app with its AppCodes and bindings: its credentials stop working at once."""
    p = platform(request)
    with p.store.session() as s:
        s.delete(_get_app(s, project_id, app_id))
    p.auth.refresh()
    return Response(status_code=204)


@router.post("/v1/{project_id}/apps/{app_id}/app-codes", status_code=201)
def create_app_code(
    project_id: str,
    app_id: str,
    request: Request,
    body: CreateAppCodeRequest | None = None,
    _who: Principal = Depends(allow("modelarts:app:create")),
) -> dict[str, Any]:
    """Add an AppCode (generated unless given); send it as `X-Apig-AppCode`. It is shown only here."""
    p = platform(request)
    code = (body.app_code if body else None) or secrets.token_urlsafe(48)
    with p.store.session() as s:
        _get_app(s, project_id, app_id)
        held = s.scalars(select(AppCode.id).where(AppCode.app_id == app_id)).all()
        if len(held) >= MAX_CODES_PER_APP:
            raise PlatformError(E.APP_CODE_QUOTA, limit=MAX_CODES_PER_APP)
        digest = code_digest(code)
        if s.scalar(select(AppCode.id).where(AppCode.code_sha256 == digest)):
            raise PlatformError(E.INVALID_ARGUMENT, detail="this AppCode is already in use; choose another")
        row = AppCode(id=uuid.uuid4().hex, app_id=app_id, code_sha256=digest, hint=code[:4], created_at=now_ms())
        s.add(row)
        out = {**_code_body(row), "app_code": code}
    p.auth.refresh()
    return out


@router.get("/v1/{project_id}/apps/{app_id}/app-codes")
def list_app_codes(
    project_id: str, app_id: str, request: Request, _who: Principal = Depends(allow("modelarts:app:list"))
) -> dict[str, Any]:
    with platform(request).store.session() as s:
        return {"app_codes": _app_body(s, _get_app(s, project_id, app_id))["app_codes"]}


@router.delete("/v1/{project_id}/apps/{app_id}/app-codes/{code_id}", status_code=204)
def delete_app_code(
    project_id: str,
    app_id: str,
    code_id: str,
    request: Request,
    _who: Principal = Depends(allow("modelarts:app:delete")),
) -> Response:
    p = platform(request)
    with p.store.session() as s:
        _get_app(s, project_id, app_id)
        row = s.get(AppCode, code_id)
        if row is None or row.app_id != app_id:
            raise PlatformError(E.APP_CODE_NOT_FOUND, code_id=code_id, app_id=app_id)
        s.delete(row)
    p.auth.refresh()
    return Response(status_code=204)


@router.post("/v1/{project_id}/apps/{app_id}/bindings", status_code=201)
def bind_app(
    project_id: str,
    app_id: str,
    body: BindRequest,
    request: Request,
    _who: Principal = Depends(allow("modelarts:app:bind")),
) -> dict[str, Any]:
    """Authorise the app for a real-time service of the same project."""
    p = platform(request)
    with p.store.session() as s:
        _get_app(s, project_id, app_id)
        svc = s.get(Service, body.service_id)
        if svc is None or svc.project_id != project_id or svc.desired == "deleted":
            raise PlatformError(E.SERVICE_NOT_FOUND, service_id=body.service_id)
        if s.get(AppBinding, (app_id, svc.id)) is None:
            s.add(AppBinding(app_id=app_id, service_id=svc.id, created_at=now_ms()))
    p.auth.refresh()
    return {"app_id": app_id, "service_id": body.service_id}


@router.get("/v1/{project_id}/apps/{app_id}/bindings")
def list_bindings(
    project_id: str, app_id: str, request: Request, _who: Principal = Depends(allow("modelarts:app:list"))
) -> dict[str, Any]:
    with platform(request).store.session() as s:
        return {"services": _app_body(s, _get_app(s, project_id, app_id))["services"]}


@router.delete("/v1/{project_id}/apps/{app_id}/bindings/{service_id}", status_code=204)
def unbind_app(
    project_id: str,
    app_id: str,
    service_id: str,
    request: Request,
    _who: Principal = Depends(allow("modelarts:app:bind")),
) -> Response:
    p = platform(request)
    with p.store.session() as s:
        _get_app(s, project_id, app_id)
        row = s.get(AppBinding, (app_id, service_id))
        if row is None:
            raise PlatformError(E.SERVICE_NOT_FOUND, service_id=service_id)
        s.delete(row)
    p.auth.refresh()
    return Response(status_code=204)
