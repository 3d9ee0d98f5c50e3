"""Request dependencies of the management API: the platform context and the caller's identity.

A caller proves who they are with a token (`X-Auth-Token`) or an SDK-HMAC-SHA256 signature made
with one of their AK/SK pairs (the body is hashed as the raw bytes received). On a
`/v1/{project_id}/…` path they must also belong to that project: a token scoped to another
project, or a user who is not a member, gets 403 ModelArts.0210; a member whose role lacks the
action gets 403 ModelArts.0108. Everything is decided from the auth snapshot, not the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fastapi import Request

from modelport.auth import signing
from modelport.auth.permissions import require
from modelport.errors import E, PlatformError

if TYPE_CHECKING:
    from modelport.platform import Platform


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    user_name: str
    is_admin: bool
    via: str  # "token" | "aksk"
    token_project: str | None = None  # a token's scope; None for AK/SK
    project_id: str | None = None  # the path's project, once checked
    role: str | None = None  # the role in `project_id`

    def require(self, action: str) -> None:
        require(self.role, action)


def platform(request: Request) -> Platform:
    return request.app.state.platform


def _headers(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def identity(request: Request) -> Principal:
    """Who the caller is (token or AK/SK signature), for paths without a project."""
    p = platform(request)
    snap = p.auth.snapshot
    headers = _headers(request)
    token = headers.get("x-auth-token")
    if token is not None or not headers.get("authorization", "").startswith(signing.ALGORITHM):
        claims = p.tokens.verify(token)
        user = snap.users.get(claims.user_id)
        if user is None:  # deleted since the token was issued
            raise PlatformError(E.TOKEN_INVALID)
        return Principal(claims.user_id, user[0], user[1], "token", token_project=claims.project_id)
    body = await request.body()
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    try:
        ak = signing.verify(
            request.method,
            raw_path.decode("latin-1"),
            request.scope.get("query_string", b"").decode("latin-1"),
            headers,
            hashlib.sha256(body).hexdigest(),
            lambda key: (snap.keys.get(key) or (None,))[0],
        )
    except signing.SignatureError as exc:
        raise PlatformError(E.SIGNATURE_INVALID, reason=exc.reason) from None
    user_id = snap.keys[ak][1]
    user = snap.users.get(user_id)
    if user is None:
        raise PlatformError(E.SIGNATURE_INVALID, reason=f"the user of access key {ak} no longer exists")
    return Principal(user_id, user[0], user[1], "aksk")


async def caller(request: Request, project_id: str) -> Principal:
    """The caller, checked against the `{project_id}` in the path (spec: 403 ModelArts.0210)."""
    who = await identity(request)
    if who.token_project is not None and who.token_project != project_id:
        raise PlatformError(E.PROJECT_MISMATCH, project_id=project_id)
    role = platform(request).auth.snapshot.role(who.user_id, project_id)
    if role is None:
        raise PlatformError(E.PROJECT_MISMATCH, project_id=project_id)
    return replace(who, project_id=project_id, role=role)


def allow(action: str) -> Callable[[Request, str], Awaitable[Principal]]:
    """A dependency: the caller of the path's project, who must have `action` (else 403 ModelArts.0108)."""

    async def dependency(request: Request, project_id: str) -> Principal:
        who = await caller(request, project_id)
        who.require(action)
        return who

    dependency.__name__ = f"allow_{action.replace(':', '_')}"
    return dependency


def require_admin(who: Principal, action: str) -> None:
    if not who.is_admin:
        raise PlatformError(E.NOT_ADMIN, action=action)
