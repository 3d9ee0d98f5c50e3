"""Gateway authentication: which credential a request carries, and whether it may call the service.

The step is a list of authenticators tried in order by which credential header is present: a
token (`X-Auth-Token`), an AppCode (`X-Apig-AppCode`), an SDK-HMAC-SHA256 signature
(`Authorization`, made with a user's AK/SK or an app's AppKey/AppSecret). Each one verifies its
credential and authorises it for the service from the pushed `AuthSnapshot` (never the store),
raising `PlatformError` otherwise:
- token / AK/SK: the user must be a member of the service's project (else 403 ModelArts.0210) with
  a role that may predict (else 403 ModelArts.0108); bad credentials 401 (ModelArts.02xx / APIG.0301);
- AppCode / AppKey: the app must be bound to the service (else 403 APIG.0304); bad ones 401 APIG.0303.

A signature covers the body, so its check returns a `Pending` that the gateway finishes once it
has the body (or at once for `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`). A request for an unknown
service is still authenticated (without authorisation) before it learns "not found", so only
callers with a known credential can probe which service ids exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Protocol

from modelport.auth import signing
from modelport.auth.snapshot import AuthSnapshot, code_digest
from modelport.auth.tokens import TokenService
from modelport.errors import E, ErrorSpec, PlatformError
from modelport.gateway.routes import ServiceRoute

Scope = MutableMapping[str, Any]
PREDICT = "modelarts:service:predict"
_SDK = signing.ALGORITHM.encode()


class SnapshotRef:
    """The gateway's current auth snapshot, swapped whole by `Gateway.set_auth`, and what was verified with it.

    `verified` memoises signature checks: the same request head (Authorization, method, path, query,
    every header) with the same body hash always gets the same answer under the same secrets, so a
    hit skips the HMAC; the ±15 min date window is still checked on every request. A new snapshot (a
    key deleted, a secret changed) starts an empty memo.
    """

    __slots__ = ("_current", "verified")

    def __init__(self, snapshot: AuthSnapshot | None = None) -> None:
        self._current = snapshot or AuthSnapshot()
        # request head -> (X-Sdk-Date as epoch seconds, body sha256 verified, user_id, app_id)
        self.verified: dict[tuple[object, ...], tuple[float, str, str | None, str | None]] = {}

    @property
    def current(self) -> AuthSnapshot:
        return self._current

    @current.setter
    def current(self, snapshot: AuthSnapshot) -> None:
        self._current = snapshot
        self.verified = {}


class Pending:
    """A signature checked up to the body: `finish(body_sha256)` verifies and authorises, or raises."""

    __slots__ = ("finish", "needs_body")

    def __init__(self, finish: Callable[[str], None], needs_body: bool) -> None:
        self.finish = finish
        self.needs_body = needs_body


class Authenticator(Protocol):
    header: bytes  # lower-case request header whose presence selects this authenticator
    secret: bool  # the header is a secret: never forwarded to the model, never logged

    def applies(self, value: bytes) -> bool: ...

    def check(self, value: bytes, route: ServiceRoute | None, scope: Scope) -> Pending | None:
        """Verify the credential; with a route, also that it may call that service."""
        ...


def _authorize_user(snap: AuthSnapshot, user_id: str, route: ServiceRoute) -> None:
    ok = snap.may(user_id, route.project_id, PREDICT)
    if ok is None:
        # Say nothing about the service's project: the caller only learns "not yours".
        raise PlatformError(E.GW_PROJECT_MISMATCH, service_id=route.service_id)
    if not ok:
        raise PlatformError(E.FORBIDDEN, action=PREDICT)


class TokenAuth:
    """`X-Auth-Token`: a platform token scoped to the service's project."""

    header = b"x-auth-token"
    secret = True

    def __init__(self, tokens: TokenService, ref: SnapshotRef) -> None:
        self._tokens = tokens
        self._ref = ref

    def applies(self, value: bytes) -> bool:
        return True

    def check(self, value: bytes, route: ServiceRoute | None, scope: Scope) -> None:
        claims = self._tokens.verify(value.decode("latin-1"))
        snap = self._ref.current
        if snap.roles is not None and claims.user_id not in snap.users:
            raise PlatformError(E.TOKEN_INVALID)  # the user was deleted
        if route is None:
            return
        if claims.project_id != route.project_id:
            raise PlatformError(E.GW_PROJECT_MISMATCH, service_id=route.service_id)
        _authorize_user(snap, claims.user_id, route)


class AppCodeAuth:
    """`X-Apig-AppCode`: an app's code; the app must be bound to the service."""

    header = b"x-apig-appcode"
    secret = True

    def __init__(self, ref: SnapshotRef) -> None:
        self._ref = ref

    def applies(self, value: bytes) -> bool:
        return True

    def check(self, value: bytes, route: ServiceRoute | None, scope: Scope) -> None:
        snap = self._ref.current
        app_id = snap.app_codes.get(code_digest(value))
        if app_id is None:
            raise PlatformError(E.GW_APP_AUTH_FAILED, reason="unknown AppCode")
        if route is not None and not snap.bound(app_id, route.service_id):
            raise PlatformError(E.GW_APP_NOT_AUTHORIZED, service_id=route.service_id)


class SignatureAuth:
    """`Authorization: SDK-HMAC-SHA256 Access=…`: a user's AK/SK or an app's AppKey/AppSecret."""

    header = b"authorization"
    secret = False  # an HMAC, not a secret; other Authorization schemes are the model's business

    def __init__(self, ref: SnapshotRef) -> None:
        self._ref = ref

    def applies(self, value: bytes) -> bool:
        return value.startswith(_SDK)

    def check(self, value: bytes, route: ServiceRoute | None, scope: Scope) -> Pending | None:
        snap = self._ref.current
        memo = self._ref.verified
        raw_path = scope.get("raw_path") or scope["path"].encode()
        # The exact request head; with the body hash it determines the verdict (the memo's key).
        head = (value, scope["method"], raw_path, scope.get("query_string", b""), tuple(scope["headers"]))
        hit = memo.get(head)
        if hit is not None and abs(time.time() - hit[0]) <= signing.MAX_SKEW_S:
            _when, body_sha, user_id, app_id = hit
            return Pending(lambda sha: self._verified(sha, body_sha, head, route, user_id, app_id), bool(body_sha))
        try:
            auth = signing.parse_authorization(value.decode("latin-1"))
        except signing.SignatureError as exc:
            raise PlatformError(E.GW_IAM_AUTH_FAILED, reason=exc.reason) from None
        access = auth.access_key
        key = snap.keys.get(access)
        app = snap.apps.get(access) if key is None else None
        if key is None and app is None:
            raise PlatformError(E.GW_IAM_AUTH_FAILED, reason=f"unknown access key {access}")
        failure: ErrorSpec = E.GW_IAM_AUTH_FAILED if key is not None else E.GW_APP_AUTH_FAILED
        secret = key[0] if key is not None else app.secret  # type: ignore[union-attr]
        user_id = key[1] if key is not None else None
        app_id = app.app_id if app is not None else None
        headers: dict[str, str] = {}
        for name, val in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), val.decode("latin-1"))
        needs_body = "x-sdk-content-sha256" not in headers

        def finish(body_sha256: str) -> None:
            path, query = raw_path.decode("latin-1"), scope.get("query_string", b"").decode("latin-1")
            try:
                signing.verify(scope["method"], path, query, headers, body_sha256, lambda _ak: secret)
            except signing.SignatureError as exc:
                raise PlatformError(failure, reason=exc.reason) from None
            if len(memo) >= 10_000:
                memo.clear()
            when = signing.parse_date(headers["x-sdk-date"]).timestamp()
            memo[head] = (when, body_sha256 if needs_body else "", user_id, app_id)
            self._authorize(route, user_id, app_id)

        return Pending(finish, needs_body)

    def _verified(
        self,
        body_sha256: str,
        verified_sha: str,
        head: tuple[object, ...],
        route: ServiceRoute | None,
        user_id: str | None,
        app_id: str | None,
    ) -> None:
        """A request head verified before: only a different body needs the full check again."""
        if verified_sha and body_sha256 != verified_sha:
            self._ref.verified.pop(head, None)
            raise PlatformError(
                E.GW_IAM_AUTH_FAILED if user_id else E.GW_APP_AUTH_FAILED,
                reason="signature does not match; check the SK, the signed headers, the path, query and body",
            )
        self._authorize(route, user_id, app_id)

    def _authorize(self, route: ServiceRoute | None, user_id: str | None, app_id: str | None) -> None:
        if route is None:
            return
        snap = self._ref.current
        if user_id is not None:
            _authorize_user(snap, user_id, route)
        elif not snap.bound(app_id, route.service_id):  # type: ignore[arg-type]
            raise PlatformError(E.GW_APP_NOT_AUTHORIZED, service_id=route.service_id)


class Authentication:
    """The auth step: the first authenticator whose header the request carries decides."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self._authenticators = tuple(authenticators)
        self.headers = frozenset(a.header for a in self._authenticators)
        self.secret_headers = frozenset(a.header for a in self._authenticators if a.secret)

    def check(self, creds: dict[bytes, bytes], route: ServiceRoute | None, scope: Scope) -> Pending | None:
        """`creds` holds the request's values of `self.headers`; `route` None: unknown service.

        Returns a `Pending` when the credential is a signature over the body, to finish with it.
        """
        if route is not None and not route.auth_required:
            return None
        for authenticator in self._authenticators:
            value = creds.get(authenticator.header)
            if value is not None and authenticator.applies(value):
                return authenticator.check(value, route, scope)
        raise PlatformError(E.GW_NO_CREDENTIAL)
