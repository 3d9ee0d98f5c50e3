"""Roles and the spec's IAM actions (§8): which role may do what in a project."""

from __future__ import annotations

from modelport.errors import E, PlatformError

ROLES = ("admin", "developer", "viewer")

_READ = {
    "modelarts:model:list",
    "modelarts:model:get",
    "modelarts:service:list",
    "modelarts:service:get",
    "modelarts:service:getEvents",
    "modelarts:service:getLogs",
    "modelarts:service:getMonitor",
    "modelarts:service:predict",
    "modelarts:app:list",
}
_WRITE = {
    "modelarts:model:create",
    "modelarts:model:delete",
    "modelarts:model:update",
    "modelarts:service:create",
    "modelarts:service:update",
    "modelarts:service:action",
    "modelarts:service:delete",
    "modelarts:app:create",
    "modelarts:app:delete",
    "modelarts:app:bind",
}
_ADMIN = {"modelarts:project:manage"}

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset(_READ),
    "developer": frozenset(_READ | _WRITE),
    "admin": frozenset(_READ | _WRITE | _ADMIN),
}


def allowed(role: str | None, action: str) -> bool:
    return role is not None and action in ROLE_ACTIONS.get(role, frozenset())


def require(role: str | None, action: str) -> None:
    """403 with the spec's code (ModelArts.0108) unless the role grants the action."""
    if not allowed(role, action):
        raise PlatformError(E.FORBIDDEN, action=action)
