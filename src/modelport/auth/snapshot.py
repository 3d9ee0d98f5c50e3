"""The auth snapshot: everything a verifier needs to decide who a request is and what it may do.

Built from the store (`load_records`) as plain, JSON-able `AuthRecords` whose secrets stay
sealed, then opened (`open_records`) into an immutable `AuthSnapshot` of lookup tables. The
gateway and the management API read only snapshots, never the store, on the request path.
Invariants:
- a snapshot is never mutated; a change is a new snapshot swapped in whole;
- `AuthRecords` never holds a plaintext secret (it travels to gateway-only processes);
- `AuthSnapshot.roles is None` means "no role information" (a bare gateway in tests and
  benchmarks): a token's project scope is then the whole authorisation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.auth.permissions import allowed
from modelport.auth.secrets import SecretBox
from modelport.store.tables import AccessKey, App, AppBinding, AppCode, Membership, User

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def code_digest(code: str | bytes) -> str:
    """What is stored and looked up for an AppCode: its SHA-256, hex."""
    return hashlib.sha256(code.encode() if isinstance(code, str) else code).hexdigest()


@dataclass(frozen=True)
class AuthRecords:
    """The rows behind a snapshot, secrets sealed. Lists of lists so that it is plain JSON."""

    access_keys: list[list[str]] = field(default_factory=list)  # [ak, user_id, sealed SK]
    apps: list[list[str]] = field(default_factory=list)  # [app_id, project_id, app_key, sealed secret]
    app_codes: list[list[str]] = field(default_factory=list)  # [sha256(code), app_id]
    bindings: list[list[str]] = field(default_factory=list)  # [app_id, service_id]
    roles: list[list[str]] = field(default_factory=list)  # [user_id, project_id, role]
    users: dict[str, list[Any]] = field(default_factory=dict)  # user_id -> [name, is_admin, tokens_valid_after]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuthRecords:
        return cls(**{k: data.get(k) or type(getattr(cls(), k))() for k in cls.__dataclass_fields__})

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def load_records(s: Session) -> AuthRecords:
    return AuthRecords(
        access_keys=sorted([k.access_key, k.user_id, k.secret_sealed] for k in s.scalars(select(AccessKey))),
        apps=sorted([a.id, a.project_id, a.app_key, a.secret_sealed] for a in s.scalars(select(App))),
        app_codes=sorted([c.code_sha256, c.app_id] for c in s.scalars(select(AppCode))),
        bindings=sorted([b.app_id, b.service_id] for b in s.scalars(select(AppBinding))),
        roles=sorted([m.user_id, m.project_id, m.role] for m in s.scalars(select(Membership))),
        users={u.id: [u.name, bool(u.is_admin), float(u.tokens_valid_after)] for u in s.scalars(select(User))},
    )


@dataclass(frozen=True, slots=True)
class AppEntry:
    app_id: str
    project_id: str
    secret: str


@dataclass(frozen=True)
class AuthSnapshot:
    revision: int = 0
    keys: Mapping[str, tuple[str, str]] = field(default_factory=_empty)  # access key -> (SK, user_id)
    apps: Mapping[str, AppEntry] = field(default_factory=_empty)  # AppKey -> app
    app_codes: Mapping[str, str] = field(default_factory=_empty)  # sha256(AppCode) -> app_id
    bindings: Mapping[str, frozenset[str]] = field(default_factory=_empty)  # service_id -> ids of the apps bound to it
    roles: Mapping[str, Mapping[str, str]] | None = None  # user_id -> project_id -> role
    users: Mapping[str, tuple[str, bool]] = field(default_factory=_empty)  # user_id -> (name, is_admin)
    valid_after: Mapping[str, float] = field(default_factory=_empty)  # user_id -> tokens issued before are revoked

    def role(self, user_id: str, project_id: str) -> str | None:
        return (self.roles or _EMPTY).get(user_id, _EMPTY).get(project_id)

    def may(self, user_id: str, project_id: str, action: str) -> bool | None:
        """Whether the user may do `action` in the project; None: not a member (or no role information)."""
        if self.roles is None:
            return True
        role = self.role(user_id, project_id)
        return None if role is None else allowed(role, action)

    def bound(self, app_id: str, service_id: str) -> bool:
        return app_id in self.bindings.get(service_id, ())


def open_records(records: AuthRecords, box: SecretBox, revision: int) -> AuthSnapshot:
    """Decrypt the sealed secrets once, into lookup tables (a record that cannot be opened is left out)."""
    keys = {}
    for ak, user_id, sealed in records.access_keys:
        secret = _open(box, sealed)
        if secret is not None:
            keys[ak] = (secret, user_id)
    apps = {}
    for app_id, project_id, app_key, sealed in records.apps:
        secret = _open(box, sealed)
        if secret is not None:
            apps[app_key] = AppEntry(app_id, project_id, secret)
    bindings: dict[str, set[str]] = {}
    for app_id, service_id in records.bindings:
        bindings.setdefault(service_id, set()).add(app_id)
    roles: dict[str, dict[str, str]] = {}
    for user_id, project_id, role in records.roles:
        roles.setdefault(user_id, {})[project_id] = role
    return AuthSnapshot(
        revision=revision,
        keys=MappingProxyType(keys),
        apps=MappingProxyType(apps),
        app_codes=MappingProxyType(dict(records.app_codes)),  # type: ignore[arg-type]
        bindings=MappingProxyType({k: frozenset(v) for k, v in bindings.items()}),
        roles=MappingProxyType({k: MappingProxyType(v) for k, v in roles.items()}),
        users=MappingProxyType({k: (v[0], bool(v[1])) for k, v in records.users.items()}),
        valid_after=MappingProxyType({k: float(v[2]) for k, v in records.users.items()}),
    )


def _open(box: SecretBox, sealed: str) -> str | None:
    try:
        return box.open(sealed)
    except Exception:  # wrong key (MODELPORT_SECRETS_KEY changed) or a damaged row: that key cannot sign
        return None
