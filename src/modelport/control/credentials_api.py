"""AK/SK pairs, on IAM's paths: `/v3.0/OS-CREDENTIAL/credentials[/{access_key}]`.

The SK is returned once, by the create call, and stored sealed (`auth/secrets.py`): the verifiers
need it back to recompute signatures. Nothing else ever returns or logs it.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from modelport.control.deps import Principal, identity, platform, require_admin
from modelport.errors import E, PlatformError
from modelport.store.tables import AccessKey, User
from modelport.timeutil import now_ms

router = APIRouter(tags=["iam"])

MAX_KEYS_PER_USER = 5
_AK_ALPHABET = string.ascii_uppercase + string.digits
_SK_ALPHABET = string.ascii_letters + string.digits


def new_access_key() -> str:
    return "MP" + "".join(secrets.choice(_AK_ALPHABET) for _ in range(18))


def new_secret(length: int = 40) -> str:
    return "".join(secrets.choice(_SK_ALPHABET) for _ in range(length))


class CredentialIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    description: str = Field(default="", max_length=255)


class CreateCredentialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credential: CredentialIn = Field(default_factory=CredentialIn)


def _body(k: AccessKey) -> dict[str, Any]:
    return {
        "access": k.access_key,
        "status": "active",
        "user_id": k.user_id,
        "description": k.description,
        "create_time": k.created_at,
    }


def _owner(who: Principal, user_id: str | None, action: str) -> str:
    if user_id and user_id != who.user_id:
        require_admin(who, action)
        return user_id
    return who.user_id


@router.post("/v3.0/OS-CREDENTIAL/credentials", status_code=201)
def create_credential(
    request: Request, body: CreateCredentialRequest | None = None, who: Principal = Depends(identity)
) -> dict[str, Any]:
    """Create an AK/SK pair for yourself (an administrator may name another user). The SK is shown only here."""
    body = body or CreateCredentialRequest()
    p = platform(request)
    user_id = _owner(who, body.credential.user_id, "iam:credentials:create")
    secret = new_secret()
    with p.store.session() as s:
        if s.get(User, user_id) is None:
            raise PlatformError(E.USER_NOT_FOUND, user_id=user_id)
        held = s.scalar(select(func.count()).where(AccessKey.user_id == user_id)) or 0
        if held >= MAX_KEYS_PER_USER:
            raise PlatformError(E.CREDENTIAL_QUOTA, limit=MAX_KEYS_PER_USER)
        key = AccessKey(
            access_key=new_access_key(),
            user_id=user_id,
            secret_sealed=p.box.seal(secret),
            description=body.credential.description,
            created_at=now_ms(),
        )
        s.add(key)
        out = {"credential": {**_body(key), "secret": secret}}
    p.auth.refresh()
    return out


@router.get("/v3.0/OS-CREDENTIAL/credentials")
def list_credentials(
    request: Request, user_id: str | None = Query(None), who: Principal = Depends(identity)
) -> dict[str, Any]:
    """Your AK/SK pairs (without the SKs)."""
    owner = _owner(who, user_id, "iam:credentials:list")
    with platform(request).store.session() as s:
        rows = s.scalars(select(AccessKey).where(AccessKey.user_id == owner).order_by(AccessKey.created_at))
        return {"credentials": [_body(k) for k in rows]}


def _get_key(request: Request, who: Principal, access_key: str) -> AccessKey:
    with platform(request).store.session() as s:
        key = s.get(AccessKey, access_key)
    if key is None or (key.user_id != who.user_id and not who.is_admin):
        raise PlatformError(E.CREDENTIAL_NOT_FOUND, access_key=access_key)
    return key


@router.get("/v3.0/OS-CREDENTIAL/credentials/{access_key}")
def show_credential(access_key: str, request: Request, who: Principal = Depends(identity)) -> dict[str, Any]:
    return {"credential": _body(_get_key(request, who, access_key))}


@router.delete("/v3.0/OS-CREDENTIAL/credentials/{access_key}", status_code=204)
def delete_credential(access_key: str, request: Request, who: Principal = Depends(identity)) -> Response:
    """Delete an AK/SK pair: requests signed with it are refused from now on."""
    key = _get_key(request, who, access_key)
    p = platform(request)
    with p.store.session() as s:
        row = s.get(AccessKey, key.access_key)
        if row is not None:
            s.delete(row)
    p.auth.refresh()
    return Response(status_code=204)
