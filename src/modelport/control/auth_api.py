"""IAM-compatible token issuing: `POST /v3/auth/tokens` with the password method."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from modelport.auth.passwords import hash_password, verify_password
from modelport.control.deps import platform
from modelport.control.schemas import TokenRequest
from modelport.errors import E, PlatformError
from modelport.store.tables import Membership, Project, User

router = APIRouter(tags=["auth"])

# Checked when the user does not exist, so that a wrong name costs the same time as a wrong password.
_DUMMY_HASH = hash_password("modelport-no-such-user")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.post("/v3/auth/tokens", status_code=201)
def create_token(body: TokenRequest, request: Request) -> JSONResponse:
    """Exchange user name + password for a project-scoped token (header `X-Subject-Token`, valid 24 h)."""
    p = platform(request)
    ident = body.auth.identity
    if "password" not in ident.methods:
        raise PlatformError(E.INVALID_ARGUMENT, detail="only the 'password' identity method is supported")
    cred = ident.password.user
    scope = body.auth.scope.project if body.auth.scope else None
    address = request.client.host if request.client else "-"
    wait = p.login_throttle.retry_after(cred.name, address)
    if wait:
        raise PlatformError(E.LOGIN_THROTTLED, retry_after=wait)
    with p.store.session() as s:
        user = s.scalar(select(User).where(User.name == cred.name))
        if not verify_password(cred.password, user.password_hash if user else _DUMMY_HASH) or user is None:
            p.login_throttle.failed(cred.name, address)
            raise PlatformError(E.BAD_CREDENTIALS)
        p.login_throttle.succeeded(cred.name, address)
        rows = s.execute(
            select(Project, Membership.role)
            .join(Membership, Membership.project_id == Project.id)
            .where(Membership.user_id == user.id)
        ).all()
        projects = {proj.id: proj for proj, _role in rows}
        roles = {proj.id: role for proj, role in rows}
        if scope and (scope.id or scope.name):
            match = [pr for pr in projects.values() if pr.id == scope.id or pr.name == scope.name]
            if not match:
                raise PlatformError(E.FORBIDDEN, action=f"project {scope.id or scope.name}")
            project = match[0]
        elif len(projects) == 1:
            project = next(iter(projects.values()))
        else:
            raise PlatformError(E.INVALID_ARGUMENT, detail="auth.scope.project (name or id) is required")
        token, claims = p.tokens.issue(user.id, user.name, project.id)
    body_out = {
        "token": {
            "methods": ["password"],
            "issued_at": _iso(claims.issued_at),
            "expires_at": _iso(claims.expires_at),
            "user": {"id": user.id, "name": user.name, "domain": {"id": user.id, "name": user.name}},
            "project": {"id": project.id, "name": project.name, "domain": {"id": user.id, "name": user.name}},
            "catalog": [],
            "roles": [{"name": roles[project.id]}],
        }
    }
    return JSONResponse(body_out, status_code=201, headers={"X-Subject-Token": token})
