"""Gateway authentication: which credential a request carries, and whether it may call the service.

The step is a list of authenticators tried in order by which credential header is present (a
token today; AK/SK signatures and AppCodes join the list later). Each one verifies its
credential and authorises it for the service, raising `PlatformError` otherwise. A request for
an unknown service is still authenticated (without authorisation) before it learns "not found",
so only callers with a valid credential can probe which service ids exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from modelport.auth.tokens import TokenService
from modelport.errors import E, PlatformError
from modelport.gateway.routes import ServiceRoute

Headers = list[tuple[bytes, bytes]]


class Authenticator(Protocol):
    header: bytes  # lower-case request header whose presence selects this authenticator
    secret: bool  # the header is a secret: never forwarded to the model, never logged

    def check(self, value: bytes, route: ServiceRoute | None, headers: Headers) -> None:
        """Verify the credential; with a route, also that it may call that service."""
        ...


class TokenAuth:
    """`X-Auth-Token`: a platform token scoped to the service's project."""

    header = b"x-auth-token"
    secret = True

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    def check(self, value: bytes, route: ServiceRoute | None, headers: Headers) -> None:
        claims = self._tokens.verify(value.decode("latin-1"))
        if route is not None and claims.project_id != route.project_id:
            # Say nothing about the service's project: the caller only learns "not yours".
            raise PlatformError(E.GW_PROJECT_MISMATCH, service_id=route.service_id)


class Authentication:
    """The auth step: the first authenticator whose header the request carries decides."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self._authenticators = tuple(authenticators)
        self.headers = frozenset(a.header for a in self._authenticators)
        self.secret_headers = frozenset(a.header for a in self._authenticators if a.secret)

    def check(self, creds: dict[bytes, bytes], route: ServiceRoute | None, headers: Headers) -> None:
        """`creds` holds the request's values of `self.headers`; `route` None: unknown service."""
        if route is not None and not route.auth_required:
            return
        for authenticator in self._authenticators:
            value = creds.get(authenticator.header)
            if value is not None:
                authenticator.check(value, route, headers)
                return
        raise PlatformError(E.NO_TOKEN)
