"""A service's auth mode and gateway limits, kept in its `additional_properties` (fields of ours).

| field | values | default |
|---|---|---|
| `auth` | `"default"` (token, AK/SK, bound apps) or `"none"` (no credential needed: explicit opt-in) | `"default"` |
| `qps_limit` | requests per second through the gateway, 1-100000 | `MODELPORT_QPS_LIMIT` (100) |
| `max_body_bytes` | largest request body, 1 B-1 GiB | `MODELPORT_MAX_BODY_BYTES` (12 MiB) |
| `request_timeout_s` | end-to-end time limit in seconds, 0.1-3600 | `MODELPORT_REQUEST_TIMEOUT_S` (40) |
| `stream_idle_timeout_s` | longest silence between events of a stream (SSE), 0.1-86400 | `request_timeout_s` |

`null` for a field removes the override. ShowService shows them under `additional_properties`.
"""

from __future__ import annotations

from typing import Any

from modelport.errors import E, PlatformError

AUTH_MODES = ("default", "none")
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "qps_limit": (int, 1, 100_000),
    "max_body_bytes": (int, 1, 1 << 30),
    "request_timeout_s": (float, 0.1, 3600),
    "stream_idle_timeout_s": (float, 0.1, 86400),
}


def check(props: dict[str, Any] | None) -> dict[str, Any]:
    """Validate the fields above (400 ModelArts.0101 otherwise); returns `props` with `null`s of ours dropped."""
    props = dict(props or {})
    auth = props.get("auth")
    if auth is not None and auth not in AUTH_MODES:
        raise PlatformError(
            E.INVALID_ARGUMENT, detail=f"additional_properties.auth must be one of {', '.join(AUTH_MODES)}"
        )
    for name, (kind, low, high) in _NUMBERS.items():
        value = props.get(name)
        if value is None:
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or (kind is int and value != int(value)) or not low <= value <= high:
            raise PlatformError(
                E.INVALID_ARGUMENT,
                detail=f"additional_properties.{name} must be a{'n integer' if kind is int else ' number'} "
                f"from {low:g} to {high:g}",
            )
        props[name] = kind(value)
    return props


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """UpdateService's merge of additional_properties: a `null` of ours removes that override."""
    merged = {**old, **check(new)}
    return {k: v for k, v in merged.items() if not (k in _NUMBERS or k == "auth") or v is not None}


def route_fields(props: dict[str, Any]) -> dict[str, Any]:
    """The `ServiceRoute` fields these properties set (values stored before validation are ignored)."""
    try:
        props = check(props)
    except PlatformError:
        return {}
    return {
        "auth_required": props.get("auth") != "none",
        "qps_limit": props.get("qps_limit"),
        "max_body_bytes": props.get("max_body_bytes"),
        "timeout_s": props.get("request_timeout_s"),
        "stream_idle_timeout_s": props.get("stream_idle_timeout_s"),
    }
