"""SDK-HMAC-SHA256 request signing (spec §5.3): the canonical request, the signer and the verifier.

The same functions serve both sides, so the client signer and the server verifier cannot drift:
- `canonical_request` follows the published algorithm: canonical URI with each segment decoded
  then strictly re-encoded (RFC 3986, `~` kept) and always a trailing `/`; query parameters sorted
  by name then value, strictly encoded; the signed headers named in `Authorization`, lower-cased,
  values trimmed; the body hashed as the raw bytes received (never re-serialised), or the literal
  of `X-Sdk-Content-Sha256` (e.g. `UNSIGNED-PAYLOAD`) when that header is present.
- `verify` checks the date window (±15 min), requires `host` and `x-sdk-date` to be signed, and
  compares signatures in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, unquote_to_bytes

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_SKEW_S = 15 * 60
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AUTH_RE = re.compile(
    r"^SDK-HMAC-SHA256\s+Access=(?P<ak>[^,\s]+),\s*SignedHeaders=(?P<headers>[^,\s]+),\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*$"
)


class SignatureError(Exception):
    """Why a signed request was refused; `reason` is safe to show (no secret in it)."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        self.reason = reason
        self.kind = kind  # invalid | expired | unknown_key | missing
        super().__init__(reason)


@dataclass(frozen=True)
class Authorization:
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def _enc(text: str) -> str:
    return quote(text, safe="-_.~")


@functools.lru_cache(maxsize=4096)  # pure; a gateway sees the same few paths over and over
def canonical_uri(path: str) -> str:
    segments = [_enc(unquote(seg)) for seg in path.split("/")]
    uri = "/".join(segments)
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query: str) -> str:
    """Sorted, strictly encoded `k=v` pairs of a raw query string (`+` is taken literally, as sent)."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&") if query else []:
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append(
            (
                unquote_to_bytes(key).decode("utf-8", "replace"),
                unquote_to_bytes(value).decode("utf-8", "replace"),
            )
        )
    pairs.sort()
    return "&".join(f"{_enc(k)}={_enc(v)}" for k, v in pairs)


def payload_hash(headers: Mapping[str, str], body_sha256: str) -> str:
    return headers.get("x-sdk-content-sha256") or body_sha256


def canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], signed: tuple[str, ...], body_sha256: str
) -> str:
    """`headers` must be keyed by lower-case names."""
    lines = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            lines,
            ";".join(signed),
            payload_hash(headers, body_sha256),
        ]
    )


def string_to_sign(date: str, canonical: str) -> str:
    return f"{ALGORITHM}\n{date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def signature(secret: str, to_sign: str) -> str:
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> Authorization:
    m = _AUTH_RE.match(value or "")
    if not m:
        raise SignatureError("Authorization is not 'SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…'")
    signed = tuple(m.group("headers").lower().split(";"))
    return Authorization(m.group("ak"), signed, m.group("sig").lower())


def sign(
    access_key: str,
    secret: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes = b"",
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers to add to a request: `X-Sdk-Date` (unless given) and `Authorization`.

    Every header in `headers` is signed (as the official SDK does), so pass the ones you will send,
    including `Host`. `path` and `query` are as they go on the wire (percent-encoded).
    """
    date = headers.get("X-Sdk-Date") or (now or datetime.now(UTC)).strftime(DATE_FORMAT)
    lower = {k.lower(): v for k, v in {**headers, "X-Sdk-Date": date}.items() if "_" not in k}
    signed = tuple(sorted(lower))
    canon = canonical_request(method, path, query, lower, signed, hashlib.sha256(body).hexdigest())
    sig = signature(secret, string_to_sign(date, canon))
    return {
        "X-Sdk-Date": date,
        "Authorization": f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(signed)}, Signature={sig}",
    }


@functools.lru_cache(maxsize=256)  # pure; concurrent requests share the second they were signed in
def parse_date(date: str) -> datetime:
    """`X-Sdk-Date` as an aware datetime, or `SignatureError`."""
    try:
        return datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise SignatureError("X-Sdk-Date must look like 20240101T000000Z") from exc


def verify(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body_sha256: str,
    secret_for: Callable[[str], str | None],
    now: datetime | None = None,
) -> str:
    """The access key of a correctly signed request, or `SignatureError`. `headers`: lower-case names."""
    auth = parse_authorization(headers.get("authorization", ""))
    if "host" not in auth.signed_headers or "x-sdk-date" not in auth.signed_headers:
        raise SignatureError("SignedHeaders must include host and x-sdk-date")
    date = headers.get("x-sdk-date", "")
    when = parse_date(date)
    now = now or datetime.now(UTC)
    if abs((now - when).total_seconds()) > MAX_SKEW_S:
        raise SignatureError(
            f"signature expired, signature time:{date}, server time:{now.strftime(DATE_FORMAT)}", "expired"
        )
    secret = secret_for(auth.access_key)
    if secret is None:
        raise SignatureError(f"unknown access key {auth.access_key}", "unknown_key")
    canon = canonical_request(method, path, query, headers, auth.signed_headers, body_sha256)
    expected = signature(secret, string_to_sign(date, canon))
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError("signature does not match; check the SK, the signed headers, the path, query and body")
    return auth.access_key
