"""Tokens: self-contained, HMAC-signed, so the gateway validates them without the store.

A token carries user, project scope, issue and expiry times. Revocation (password change, user
delete) works through a per-user "valid after" time that the control plane pushes to the
verifier: any token issued before it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import E, PlatformError

_PREFIX = "MPT1."


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    user_name: str
    project_id: str
    issued_at: float
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: Path) -> bytes:
    """The platform's signing key: 32 random bytes in a 0600 file, made on first start."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


class TokenService:
    """Issues and verifies tokens. Verification is pure CPU and memoised per token string."""

    def __init__(self, key: bytes, ttl_s: int = 24 * 3600) -> None:
        self._key = key
        self.ttl_s = ttl_s
        self._valid_after: dict[str, float] = {}
        self._cache: dict[str, TokenClaims] = {}

    def issue(self, user_id: str, user_name: str, project_id: str, now: float | None = None) -> tuple[str, TokenClaims]:
        now = time.time() if now is None else now
        claims = TokenClaims(user_id, user_name, project_id, now, now + self.ttl_s)
        payload = json.dumps(
            {
                "u": user_id,
                "n": user_name,
                "p": project_id,
                "iat": now,
                "exp": claims.expires_at,
                "j": secrets.token_hex(8),
            },
            separators=(",", ":"),
        ).encode()
        body = _b64(payload)
        sig = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        return f"{_PREFIX}{body}.{sig}", claims

    def revoke_user_tokens(self, user_id: str, before: float | None = None) -> None:
        """Refuse every token of the user issued before `before` (default: now)."""
        self._valid_after[user_id] = time.time() if before is None else before
        self._cache.clear()

    def set_valid_after(self, valid_after: dict[str, float]) -> None:
        self._valid_after = dict(valid_after)
        self._cache.clear()

    def verify(self, token: str | None, now: float | None = None) -> TokenClaims:
        """Claims of a valid token, or `PlatformError` (missing, invalid, expired, revoked)."""
        if not token:
            raise PlatformError(E.NO_TOKEN)
        now = time.time() if now is None else now
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = claims
        if claims.expires_at <= now:
            raise PlatformError(E.TOKEN_EXPIRED)
        if claims.issued_at < self._valid_after.get(claims.user_id, 0.0):
            raise PlatformError(E.TOKEN_INVALID)
        return claims

    def _decode(self, token: str) -> TokenClaims:
        if not token.startswith(_PREFIX) or token.count(".") != 2:
            raise PlatformError(E.TOKEN_INVALID)
        body, _, sig = token[len(_PREFIX) :].partition(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, sig):
            raise PlatformError(E.TOKEN_INVALID)
        try:
            data = json.loads(_unb64(body))
            return TokenClaims(data["u"], data["n"], data["p"], float(data["iat"]), float(data["exp"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PlatformError(E.TOKEN_INVALID) from exc
