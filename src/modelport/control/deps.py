"""Request dependencies of the management API: the platform context and the caller's identity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from modelport.auth.tokens import TokenClaims
from modelport.errors import E, PlatformError

if TYPE_CHECKING:
    from modelport.platform import Platform


def platform(request: Request) -> Platform:
    return request.app.state.platform


def caller(request: Request, project_id: str) -> TokenClaims:
    """The token's claims, checked against the `{project_id}` in the path (spec: 403 ModelArts.0210)."""
    claims = platform(request).tokens.verify(request.headers.get("x-auth-token"))
    if claims.project_id != project_id:
        raise PlatformError(E.PROJECT_MISMATCH, project_id=project_id)
    return claims
