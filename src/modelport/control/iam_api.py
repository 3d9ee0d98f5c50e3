"""Users, projects and memberships, IAM-style under `/v3/…`.

- users: `POST/GET /v3/users`, `DELETE /v3/users/{user_id}`, `POST /v3/users/{user_id}/password`
- projects: `POST/GET /v3/projects`
- members: `GET /v3/projects/{project_id}/users`, `PUT /v3/projects/{project_id}/users/{user_id}/roles/{role}`,
  `DELETE /v3/projects/{project_id}/users/{user_id}`

Platform administrators (`is_admin`) create and delete users and projects; a project's `admin`
role manages its members. A password change or a delete revokes the user's tokens at once.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.auth.passwords import hash_password, verify_password
from modelport.auth.permissions import ROLES, allowed
from modelport.control.deps import Principal, identity, platform, require_admin
from modelport.errors import E, PlatformError
from modelport.store.tables import Membership, Project, User
from modelport.timeutil import now_ms

router = APIRouter(tags=["iam"])

_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_MANAGE = "modelarts:project:manage"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError("1-64 characters: letters, digits and . _ - @")
    return value


class UserIn(_Strict):
    name: str
    password: str = Field(min_length=8, max_length=128)
    is_admin: bool = False

    _n = field_validator("name")(_name)


class CreateUserRequest(_Strict):
    user: UserIn


class PasswordIn(_Strict):
    password: str = Field(min_length=8, max_length=128)
    original_password: str | None = Field(default=None, max_length=128)


class ChangePasswordRequest(_Strict):
    user: PasswordIn


class ProjectIn(_Strict):
    name: str
    description: str = Field(default="", max_length=255)

    _n = field_validator("name")(_name)


class CreateProjectRequest(_Strict):
    project: ProjectIn


def _user_body(u: User) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "is_admin": bool(u.is_admin), "created_at": u.created_at, "enabled": True}


def _get_user(s: Session, user_id: str) -> User:
    user = s.get(User, user_id)
    if user is None:
        raise PlatformError(E.USER_NOT_FOUND, user_id=user_id)
    return user


def _changed(request: Request) -> None:
    """Users, roles or keys changed: rebuild the auth snapshot now (tokens, gateway, other gateways)."""
    platform(request).auth.refresh()


@router.post("/v3/users", status_code=201)
def create_user(body: CreateUserRequest, request: Request, who: Principal = Depends(identity)) -> dict[str, Any]:
    """Create a user (platform administrators only). The user joins projects through memberships."""
    require_admin(who, "iam:users:create")
    with platform(request).store.session() as s:
        if s.scalar(select(User.id).where(User.name == body.user.name)):
            raise PlatformError(E.USER_EXISTS, name=body.user.name)
        user = User(
            id=uuid.uuid4().hex,
            name=body.user.name,
            password_hash=hash_password(body.user.password),
            is_admin=body.user.is_admin,
            tokens_valid_after=0.0,
            created_at=now_ms(),
        )
        s.add(user)
        s.flush()
        out = {"user": _user_body(user)}
    _changed(request)
    return out


@router.get("/v3/users")
def list_users(request: Request, who: Principal = Depends(identity)) -> dict[str, Any]:
    """All users for a platform administrator; just yourself otherwise."""
    with platform(request).store.session() as s:
        q = select(User).order_by(User.name)
        if not who.is_admin:
            q = q.where(User.id == who.user_id)
        users = [_user_body(u) for u in s.scalars(q)]
    return {"users": users}


@router.delete("/v3/users/{user_id}", status_code=204)
def delete_user(user_id: str, request: Request, who: Principal = Depends(identity)) -> Response:
    """Delete a user: their memberships, AK/SK pairs and tokens go with them."""
    require_admin(who, "iam:users:delete")
    with platform(request).store.session() as s:
        user = _get_user(s, user_id)
        if user.is_admin and (s.scalar(select(func.count()).where(User.is_admin.is_(True))) or 0) <= 1:
            raise PlatformError(E.LAST_ADMIN, detail=f"user {user.name} is the last administrator")
        s.delete(user)
    _changed(request)
    return Response(status_code=204)


@router.post("/v3/users/{user_id}/password", status_code=204)
def change_password(
    user_id: str, body: ChangePasswordRequest, request: Request, who: Principal = Depends(identity)
) -> Response:
    """Set a new password; your own needs the original one. Every token of the user is revoked."""
    with platform(request).store.session() as s:
        if user_id != who.user_id:
            require_admin(who, "iam:users:password")
        user = _get_user(s, user_id)
        if user_id == who.user_id and not (
            body.user.original_password and verify_password(body.user.original_password, user.password_hash)
        ):
            raise PlatformError(E.BAD_CREDENTIALS)
        user.password_hash = hash_password(body.user.password)
        user.tokens_valid_after = time.time()
    _changed(request)
    return Response(status_code=204)


def _project_body(p: Project, role: str | None) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "created_at": p.created_at, "role": role, "enabled": True}


@router.post("/v3/projects", status_code=201)
def create_project(body: CreateProjectRequest, request: Request, who: Principal = Depends(identity)) -> dict[str, Any]:
    """Create a project (platform administrators only); its creator becomes its `admin`."""
    require_admin(who, "iam:projects:create")
    with platform(request).store.session() as s:
        if s.scalar(select(Project.id).where(Project.name == body.project.name)):
            raise PlatformError(E.PROJECT_EXISTS, name=body.project.name)
        project = Project(id=uuid.uuid4().hex, name=body.project.name, created_at=now_ms())
        s.add(project)
        s.flush()
        s.add(Membership(user_id=who.user_id, project_id=project.id, role="admin"))
        out = {"project": _project_body(project, "admin")}
    _changed(request)
    return out


@router.get("/v3/projects")
def list_projects(request: Request, who: Principal = Depends(identity)) -> dict[str, Any]:
    """The projects you are a member of, with your role (every project for a platform administrator)."""
    with platform(request).store.session() as s:
        mine = {m.project_id: m.role for m in s.scalars(select(Membership).where(Membership.user_id == who.user_id))}
        q = select(Project).order_by(Project.name)
        if not who.is_admin:
            q = q.where(Project.id.in_(list(mine)))
        return {"projects": [_project_body(p, mine.get(p.id)) for p in s.scalars(q)]}


def _member_of(request: Request, who: Principal, project_id: str, action: str | None) -> None:
    """Members see a project; `action` (managing members) needs the project's admin role or a platform admin."""
    if who.is_admin:
        with platform(request).store.session() as s:
            if s.get(Project, project_id) is None:
                raise PlatformError(E.PROJECT_NOT_FOUND, project_id=project_id)
        return
    role = platform(request).auth.snapshot.role(who.user_id, project_id)
    if role is None:
        raise PlatformError(E.PROJECT_MISMATCH, project_id=project_id)
    if action is not None and not allowed(role, action):
        raise PlatformError(E.FORBIDDEN, action=action)


@router.get("/v3/projects/{project_id}/users")
def list_members(project_id: str, request: Request, who: Principal = Depends(identity)) -> dict[str, Any]:
    _member_of(request, who, project_id, None)
    with platform(request).store.session() as s:
        rows = s.execute(
            select(User, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == project_id)
            .order_by(User.name)
        ).all()
        return {"users": [{**_user_body(u), "role": role} for u, role in rows]}


@router.put("/v3/projects/{project_id}/users/{user_id}/roles/{role}", status_code=204)
def set_member_role(
    project_id: str, user_id: str, role: str, request: Request, who: Principal = Depends(identity)
) -> Response:
    """Make a user a member of the project with `role` (admin, developer or viewer), or change their role."""
    _member_of(request, who, project_id, _MANAGE)
    if role not in ROLES:
        raise PlatformError(E.INVALID_ARGUMENT, detail=f"role must be one of {', '.join(ROLES)}")
    with platform(request).store.session() as s:
        _get_user(s, user_id)
        member = s.get(Membership, (user_id, project_id))
        if member is None:
            s.add(Membership(user_id=user_id, project_id=project_id, role=role))
        else:
            member.role = role
    _changed(request)
    return Response(status_code=204)


@router.delete("/v3/projects/{project_id}/users/{user_id}", status_code=204)
def remove_member(project_id: str, user_id: str, request: Request, who: Principal = Depends(identity)) -> Response:
    """Take a user out of the project: their tokens and keys no longer reach it."""
    _member_of(request, who, project_id, _MANAGE)
    with platform(request).store.session() as s:
        member = s.get(Membership, (user_id, project_id))
        if member is None:
            raise PlatformError(E.USER_NOT_FOUND, user_id=user_id)
        s.delete(member)
    _changed(request)
    return Response(status_code=204)
